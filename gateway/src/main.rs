//! `telegraphy-gateway`: run one Telegraphy gateway node.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use telegraphy_gateway::config::{LogFormat, LogOverrides, Overrides, UriRulesSetting};
use telegraphy_gateway::{shutdown_signal, Config, Gateway, Prepared};

/// Telegraphy gateway: a WAMP v2 router that pushes server-side events to browsers and carries their calls.
///
/// Settings come from defaults, then --config FILE, then TELEGRAPHY_* environment
/// variables (nested keys with `__`, e.g. TELEGRAPHY_LIMITS__MAX_MESSAGE_SIZE=131072),
/// then these flags. See docs/configuration.md.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  telegraphy-gateway --dev                      # demo page at http://127.0.0.1:8080/\n  telegraphy-gateway --config deploy/telegraphy.toml\n  TELEGRAPHY_API_KEYS=$(openssl rand -hex 24) telegraphy-gateway --listen 0.0.0.0:8080"
)]
struct Args {
    /// TOML configuration file (see deploy/telegraphy.toml).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Public listener: WebSocket at /ws, POST /publish [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Admin listener: /metrics, /healthz, /readyz [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Event bus URL [default: memory://].
    #[arg(long, value_name = "URL")]
    bus: Option<String>,
    /// A realm sessions may join (repeat for several) [default: realm1].
    #[arg(long = "realm", value_name = "URI")]
    realms: Vec<String>,
    /// API keys for POST /publish, comma-separated.
    #[arg(long, value_name = "KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// URI rules for topics [default: loose].
    #[arg(long, value_enum)]
    uri_rules: Option<UriRulesSetting>,
    /// Development mode: live demo page at /, API key `dev`, anonymous
    /// sessions that may publish too; loopback only.
    #[arg(long)]
    dev: bool,
    /// Let sessions in without credentials (role `anonymous`).
    #[arg(long)]
    allow_anonymous: bool,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info, debug, telegraphy_gateway=debug [default: info].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Print the effective configuration (secrets left out) and exit.
    #[arg(long)]
    print_config: bool,
}

impl Args {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            admin_listen: self.admin_listen,
            bus: self.bus.clone(),
            realms: (!self.realms.is_empty()).then(|| self.realms.clone()),
            api_keys: (!self.api_keys.is_empty()).then(|| self.api_keys.clone()),
            uri_rules: self.uri_rules,
            dev: self.dev.then_some(true),
            allow_anonymous: self.allow_anonymous.then_some(true),
            log: (self.log_format.is_some() || self.log_level.is_some())
                .then(|| LogOverrides { format: self.log_format, level: self.log_level.clone() }),
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut config = match Config::load(args.config.as_deref(), &args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("telegraphy-gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.print_config {
        match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                return std::process::ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("telegraphy-gateway: cannot print the configuration: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if let Err(e) = init_logging(&config) {
        eprintln!("telegraphy-gateway: {e:#}");
        return std::process::ExitCode::from(2);
    }
    fit_open_files(&mut config);
    // Keys, roles, CRA users and TLS files, loaded before anything listens.
    let prepared = match Prepared::new(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("telegraphy-gateway: {e}");
            return std::process::ExitCode::from(if e.is_configuration() { 2 } else { 1 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("telegraphy-gateway: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(async {
        let gateway = Gateway::bind_prepared(prepared).await?;
        gateway.run(shutdown_signal()).await?;
        anyhow::Ok(())
    }) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("telegraphy-gateway: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every WebSocket holds an open file. Raises this process's open-files
/// limit to its hard limit (what Go and most servers do), and lowers
/// `limits.max_connections` to what fits, so that clients beyond it get a
/// clean HTTP 503 instead of failed accepts, with a warning that says what
/// to raise.
fn fit_open_files(config: &mut Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit; connections beyond it will fail to be accepted");
            return;
        }
    };
    // Listeners, bus connections, HTTP publishers, logs and the runtime
    // need files too.
    let reserved = 64 + limit / 100;
    let room = usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX).max(1);
    let wanted = config.limits.max_connections;
    if room < wanted && wanted == telegraphy_gateway::config::Limits::default().max_connections {
        // The default asks for more than the process may open: fit it,
        // quietly (every development machine would be told otherwise); the
        // startup line shows the effective limit.
        tracing::debug!(open_files_limit = limit, max_connections = room, "limits.max_connections fitted to the open-files limit");
        config.limits.max_connections = room;
    } else if room < wanted {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = room,
            configured = wanted,
            "this process may open only {limit} files, so this node holds at most {room} WebSockets \
             (limits.max_connections is {wanted}): beyond it, connections that have not logged in are shed and \
             new WebSockets are refused with HTTP 503. To hold more, raise the hard limit: `ulimit -Hn` as root, \
             systemd `LimitNOFILE=`, or the container runtime's `nofile` ulimit"
        );
        config.limits.max_connections = room;
    } else {
        tracing::debug!(open_files_limit = limit, "open-files limit");
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    // lapin logs each lost connection as errors of its own; the bus adapter
    // reports the outage once, with lapin's reason (unless asked for lapin's logs).
    let level = if config.log.level.contains("lapin") { config.log.level.clone() } else { format!("{},lapin=off", config.log.level) };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .with_context(|| format!("key `log.level`: `{}` is not a valid log filter (try info or debug)", config.log.level))?;
    // Colours only for people at a terminal, never in files or log pipelines.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout).with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}
