//! `telegraphy-publish`: publish Telegraphy events from cron jobs and shell
//! scripts, straight onto the bus or through a gateway's HTTP endpoint.
//! A thin shell over the `telegraphy-publisher` library.

use std::io::BufRead as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use telegraphy_bus::{BusOptions, Filter, JsonOptions, PublishRequest};
use telegraphy_publisher::{Error, ErrorKind, Event, Publisher};
use telegraphy_wamp::Value;

/// Exit statuses (also listed in --help).
mod status {
    pub(crate) const BAD_INPUT: u8 = 2;
    pub(crate) const UNAVAILABLE: u8 = 3;
    pub(crate) const UNAUTHORIZED: u8 = 4;
    pub(crate) const REJECTED: u8 = 5;
    pub(crate) const NO_SUBSCRIBER: u8 = 6;
}

const AFTER_HELP: &str = "\
Examples:
  # one event straight onto Redis
  telegraphy-publish --bus redis://127.0.0.1:6379/0 com.example.orders.created '[42]' '{\"total\": 9.5}'

  # through a gateway's HTTP endpoint
  TELEGRAPHY_API_KEY=... telegraphy-publish --gateway http://127.0.0.1:8080 demo.hello '[\"hi\"]'

  # a batch: one JSON object per line
  printf '%s\\n' '{\"topic\": \"a.b\", \"args\": [1]}' '{\"topic\": \"a.c\", \"kwargs\": {\"x\": 2}}' \\
    | telegraphy-publish --bus amqp://guest:guest@127.0.0.1:5672/%2f --stdin

Each published event's publication id is printed on its own line.
Exit status: 0 every event was accepted by the bus; 2 bad input (the event, a JSON line, a URL);
3 the bus or gateway is unreachable or not accepting events (retry later); 4 credentials refused;
5 the bus refused an event; 6 (with --require-subscriber) no node subscribed to the topic got an event.
With --stdin, lines with bad input are reported and skipped, and the
first failure decides the status; an unreachable bus stops the batch.";

/// Publish Telegraphy events from the command line.
#[derive(Parser, Debug)]
#[command(version, after_help = AFTER_HELP)]
struct Args {
    /// Bus URL: redis://HOST:6379/0 or amqp://USER:PASS@HOST:5672/VHOST.
    #[arg(long, env = "TELEGRAPHY_BUS", value_name = "URL", conflicts_with = "gateway")]
    bus: Option<String>,
    /// Gateway base URL, to publish through its HTTP endpoint (needs --api-key).
    #[arg(long, env = "TELEGRAPHY_GATEWAY_URL", value_name = "URL")]
    gateway: Option<String>,
    /// Bus URL read from a file (a mounted secret; its trailing newline is ignored).
    #[arg(long, env = "TELEGRAPHY_BUS_FILE", value_name = "PATH", conflicts_with_all = ["bus", "gateway"])]
    bus_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that sign a rediss:// or amqps:// broker's certificate (besides the system's roots).
    #[arg(long, env = "TELEGRAPHY_BUS_TLS__CA_FILE", value_name = "PATH")]
    bus_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a TLS broker that asks for one (with --bus-key-file).
    #[arg(long, env = "TELEGRAPHY_BUS_TLS__CERT_FILE", value_name = "PATH", requires = "bus_key_file")]
    bus_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "TELEGRAPHY_BUS_TLS__KEY_FILE", value_name = "PATH", requires = "bus_cert_file")]
    bus_key_file: Option<std::path::PathBuf>,
    /// API key for --gateway.
    #[arg(long, env = "TELEGRAPHY_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// API key for --gateway, read from a file (a mounted secret; its trailing newline is ignored).
    #[arg(long, env = "TELEGRAPHY_API_KEY_FILE", value_name = "PATH", conflicts_with = "api_key")]
    api_key_file: Option<std::path::PathBuf>,
    /// Realm of the events.
    #[arg(long, default_value = telegraphy_publisher::DEFAULT_REALM)]
    realm: String,
    /// Give up connecting or publishing after this long (e.g. 5s, 500ms).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Redis channel prefix; must match the gateways' redis.key_prefix.
    #[arg(long, env = "TELEGRAPHY_REDIS__KEY_PREFIX", default_value = "telegraphy:")]
    redis_key_prefix: String,
    /// RabbitMQ exchange; must match the gateways' amqp.exchange.
    #[arg(long, env = "TELEGRAPHY_AMQP__EXCHANGE", default_value = "telegraphy")]
    amqp_exchange: String,
    /// Only these session ids may receive the event (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    eligible: Vec<u64>,
    /// These session ids must not receive the event (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    exclude: Vec<u64>,
    /// Only sessions with these authids may receive the event.
    #[arg(long, value_delimiter = ',', value_name = "AUTHIDS")]
    eligible_authid: Vec<String>,
    /// Sessions with these authids must not receive the event.
    #[arg(long, value_delimiter = ',', value_name = "AUTHIDS")]
    exclude_authid: Vec<String>,
    /// Only sessions with these authroles may receive the event.
    #[arg(long, value_delimiter = ',', value_name = "ROLES")]
    eligible_authrole: Vec<String>,
    /// Sessions with these authroles must not receive the event.
    #[arg(long, value_delimiter = ',', value_name = "ROLES")]
    exclude_authrole: Vec<String>,
    /// Succeed only if at least one gateway node subscribed to the topic got
    /// the event (exit status 6 otherwise). Without it, an event nobody
    /// subscribes to is accepted and dropped by the bus, which is not an error.
    #[arg(long)]
    require_subscriber: bool,
    /// Keep the event as the topic's retained event: subscribers that ask
    /// for it (`get_retained`) get it as soon as they subscribe.
    #[arg(long)]
    retain: bool,
    /// With --stdin: most events in flight at once (their confirms are
    /// awaited together; each event's fate is still reported in order).
    #[arg(long, default_value_t = 256, value_name = "N")]
    window: usize,
    /// Read events from standard input, one JSON object per line:
    /// {"topic": "...", "args": [...], "kwargs": {...}, "options": {...}, "realm": "...",
    /// "require_subscriber": true}. "options" takes the six lists above and
    /// "retain" (e.g. {"eligible": [ID]}); what a line leaves out comes from the flags.
    #[arg(long, conflicts_with_all = ["topic", "args", "kwargs"])]
    stdin: bool,
    /// The topic URI.
    #[arg(required_unless_present = "stdin")]
    topic: Option<String>,
    /// Positional arguments, as a JSON array.
    #[arg(value_name = "ARGS_JSON")]
    args: Option<String>,
    /// Keyword arguments, as a JSON object.
    #[arg(value_name = "KWARGS_JSON")]
    kwargs: Option<String>,
}

/// A failure with the exit status it maps to.
struct Failure {
    status: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let status = match e.kind() {
            ErrorKind::InvalidInput => status::BAD_INPUT,
            ErrorKind::Unavailable => status::UNAVAILABLE,
            ErrorKind::Unauthorized => status::UNAUTHORIZED,
            ErrorKind::Rejected => status::REJECTED,
            ErrorKind::NoSubscriber => status::NO_SUBSCRIBER,
        };
        Failure { status, message: e.to_string() }
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure { status: status::BAD_INPUT, message: message.into() }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("telegraphy-publish: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("telegraphy-publish: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let publisher = connect(&args).await?;
    let result = if args.stdin { publish_lines(&args, &publisher).await } else { publish_one(&args, &publisher).await };
    publisher.close();
    result
}

/// A secret from a file, without its trailing newline.
fn read_secret(flag: &str, path: &std::path::Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("{flag}: cannot read {}: {e}", path.display())))?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    Ok(text.to_string())
}

async fn connect(args: &Args) -> Result<Publisher, Failure> {
    let bus = match &args.bus_file {
        Some(path) => Some(read_secret("--bus-file", path)?),
        None => args.bus.clone(),
    };
    match (&bus, &args.gateway) {
        (Some(bus), _) => {
            let read = |flag: &str, path: &Option<std::path::PathBuf>| {
                path.as_deref().map(|p| std::fs::read(p).map_err(|e| bad(format!("{flag}: cannot read {}: {e}", p.display())))).transpose()
            };
            let tls = telegraphy_bus::BusTls {
                ca_pem: read("--bus-ca-file", &args.bus_ca_file)?,
                client_cert_pem: read("--bus-cert-file", &args.bus_cert_file)?,
                client_key_pem: read("--bus-key-file", &args.bus_key_file)?,
            };
            let options = BusOptions {
                tls,
                redis_key_prefix: args.redis_key_prefix.clone(),
                amqp_exchange: args.amqp_exchange.clone(),
                connect_timeout: args.timeout,
                ..BusOptions::default()
            };
            Ok(Publisher::connect_with(bus, &options).await?)
        }
        (None, Some(gateway)) => {
            let key = match &args.api_key_file {
                Some(path) => read_secret("--api-key-file", path)?,
                None => args.api_key.clone().unwrap_or_default(),
            };
            Ok(Publisher::gateway(gateway, &key, args.timeout)?)
        }
        (None, None) => Err(bad("say where to publish: --bus URL (or TELEGRAPHY_BUS), or --gateway URL with --api-key")),
    }
}

fn filter_from_flags(args: &Args) -> Filter {
    let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Filter {
        exclude: args.exclude.clone(),
        eligible: (!args.eligible.is_empty()).then(|| args.eligible.clone()),
        exclude_authid: args.exclude_authid.clone(),
        eligible_authid: some(&args.eligible_authid),
        exclude_authrole: args.exclude_authrole.clone(),
        eligible_authrole: some(&args.eligible_authrole),
    }
}

fn parse_json(what: &str, text: &str) -> Result<Value, Failure> {
    telegraphy_wamp::Serialization::Json.decode_value(text.as_bytes()).map_err(|e| bad(format!("{what} is not valid JSON: {e}")))
}

async fn publish_one(args: &Args, publisher: &Publisher) -> Result<(), Failure> {
    let topic = args.topic.clone().unwrap_or_default();
    let mut event = Event::new(topic).realm(args.realm.clone());
    if let Some(text) = &args.args {
        match parse_json("ARGS_JSON", text)? {
            Value::List(l) => event.args = l,
            other => return Err(bad(format!("ARGS_JSON must be a JSON array, got {}", other.type_name()))),
        }
    }
    if let Some(text) = &args.kwargs {
        match parse_json("KWARGS_JSON", text)? {
            Value::Dict(d) => event.kwargs = d,
            other => return Err(bad(format!("KWARGS_JSON must be a JSON object, got {}", other.type_name()))),
        }
    }
    event.filter = filter_from_flags(args);
    event.require_subscriber = args.require_subscriber;
    event.retain = args.retain;
    let id = tokio::time::timeout(args.timeout, publisher.publish(event))
        .await
        .map_err(|_| Failure { status: status::UNAVAILABLE, message: format!("no confirmation within {:?}", args.timeout) })??;
    println!("{id}");
    Ok(())
}

/// One stdin line into an event: the shared request codec reads it (its
/// options may only be the six lists); what the line leaves out comes from
/// the flags.
fn event_from_line(args: &Args, line: &str) -> Result<Event, Failure> {
    let request = PublishRequest::from_json(line.as_bytes(), JsonOptions::ListsOnly).map_err(|e| bad(e.to_string()))?;
    let PublishRequest { topic, args: payload, kwargs, options, realm, require_subscriber } = request;
    let mut event = Event::new(topic).realm(realm.unwrap_or_else(|| args.realm.clone()));
    event.args = payload;
    event.kwargs = kwargs;
    event.retain = options.as_ref().map_or(args.retain, |o| o.retain || args.retain);
    event.filter = options.map_or_else(|| filter_from_flags(args), |o| o.filter);
    event.require_subscriber = require_subscriber.unwrap_or(args.require_subscriber);
    Ok(event)
}

async fn publish_lines(args: &Args, publisher: &Publisher) -> Result<(), Failure> {
    // A thread reads lines (stdin is blocking); the batch is whatever
    // waits when the previous one is answered, at most --window events:
    // a file goes through in full windows, a trickle one event at a time.
    let window = args.window.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, std::io::Result<String>)>(window);
    std::thread::spawn(move || {
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let failed = line.is_err();
            if tx.blocking_send((n + 1, line)).is_err() || failed {
                return;
            }
        }
    });
    let mut first_failure: Option<Failure> = None;
    let mut report = |n: usize, outcome: Failure| -> bool {
        eprintln!("telegraphy-publish: line {n}: {}", outcome.message);
        let stop = outcome.status == status::UNAVAILABLE || outcome.status == status::UNAUTHORIZED;
        first_failure.get_or_insert(Failure { status: outcome.status, message: format!("line {n}: {}", outcome.message) });
        stop
    };
    let mut lines = Vec::with_capacity(window);
    'batches: while rx.recv_many(&mut lines, window).await > 0 {
        let mut batch: Vec<(usize, Event)> = Vec::with_capacity(lines.len());
        let mut stop = false;
        for (n, line) in lines.drain(..) {
            let line = line.map_err(|e| bad(format!("cannot read standard input: {e}")))?;
            if line.trim().is_empty() {
                continue;
            }
            match event_from_line(args, &line) {
                Ok(event) => batch.push((n, event)),
                // A bad line is reported in its place: publish what came before it first.
                Err(f) => {
                    stop |= publish_batch(args, publisher, std::mem::take(&mut batch), &mut report).await;
                    stop |= report(n, f);
                }
            }
            if stop {
                break 'batches;
            }
        }
        if publish_batch(args, publisher, batch, &mut report).await {
            break;
        }
    }
    match first_failure {
        None => Ok(()),
        Some(f) => Err(Failure { status: f.status, message: format!("not every event was published (first failure at {})", f.message) }),
    }
}

/// Publishes one batch and prints each event's id (or reports its failure)
/// in line order. Returns whether to stop.
async fn publish_batch(args: &Args, publisher: &Publisher, batch: Vec<(usize, Event)>, report: &mut impl FnMut(usize, Failure) -> bool) -> bool {
    if batch.is_empty() {
        return false;
    }
    let (numbers, events): (Vec<usize>, Vec<Event>) = batch.into_iter().unzip();
    // Each round trip is bounded by --timeout inside the publisher; this
    // only guards against a hang, and through a gateway the requests of a
    // batch go one after the other.
    let guard = args.timeout.saturating_mul(u32::try_from(events.len()).unwrap_or(u32::MAX).saturating_add(1));
    let answers = match tokio::time::timeout(guard, publisher.publish_batch(events)).await {
        Ok(answers) => answers.into_iter().map(|a| a.map_err(Failure::from)).collect(),
        Err(_) => numbers
            .iter()
            .map(|_| {
                Err(Failure {
                    status: status::UNAVAILABLE,
                    message: format!("no answer within {guard:?}; the event may or may not have been published"),
                })
            })
            .collect::<Vec<_>>(),
    };
    let mut stop = false;
    for (n, answer) in numbers.into_iter().zip(answers) {
        match answer {
            Ok(id) => println!("{id}"),
            Err(f) => stop |= report(n, f),
        }
    }
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        Args::parse_from(["telegraphy-publish", "--stdin"].iter().chain(flags))
    }

    #[test]
    fn a_line_takes_what_it_leaves_out_from_the_flags() {
        let flags = args(&["--realm", "r9", "--exclude", "5", "--eligible-authrole", "admin", "--require-subscriber"]);
        let e = event_from_line(&flags, r#"{"topic": "a.b", "args": [1]}"#).ok().unwrap();
        assert_eq!((e.topic.as_str(), e.realm.as_deref(), e.require_subscriber), ("a.b", Some("r9"), true));
        assert_eq!(e.args, vec![Value::UInt(1)]);
        assert_eq!(e.filter, Filter { exclude: vec![5], eligible_authrole: Some(vec!["admin".into()]), ..Filter::default() });
        // What the line says wins, options as a whole.
        let line = r#"{"topic": "a.b", "realm": "r1", "options": {"eligible": [3]}, "require_subscriber": false}"#;
        let e = event_from_line(&flags, line).ok().unwrap();
        assert_eq!((e.realm.as_deref(), e.require_subscriber), (Some("r1"), false));
        assert_eq!(e.filter, Filter { eligible: Some(vec![3]), ..Filter::default() });
    }

    #[test]
    fn bad_lines_are_bad_input_with_the_codec_s_message() {
        let flags = args(&[]);
        for (line, message) in [
            ("not json", "not valid JSON: expected ident at line 1 column 2"),
            (r#"{"args": []}"#, "\"topic\" is missing"),
            (
                r#"{"topic": "a.b", "options": {"eligable": [1]}}"#,
                "unknown option `eligable`; use eligible, eligible_authid, eligible_authrole, exclude, exclude_authid or exclude_authrole",
            ),
            (
                r#"{"topic": "a.b", "options": {"acknowledge": true}}"#,
                "unknown option `acknowledge`; use eligible, eligible_authid, eligible_authrole, exclude, exclude_authid or exclude_authrole",
            ),
            (
                r#"{"topic": "a.b", "retain": true}"#,
                "unknown field \"retain\"; a publish request takes topic, args, kwargs, options, realm and require_subscriber",
            ),
        ] {
            let f = event_from_line(&flags, line).err().unwrap();
            assert_eq!((f.status, f.message.as_str()), (status::BAD_INPUT, message), "{line}");
        }
    }
}
