//! Starting the routers under test: `telegraphy-gateway` nodes with a
//! generated configuration, or the bare `telegraphy-ceiling` program.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A router process this harness started; killed when dropped.
pub struct RouterProc {
    child: Child,
    /// Its pid, for /proc sampling.
    pub pid: u32,
    /// `ws://…/ws`.
    pub ws_url: String,
    /// `http://…` of the public listener (HTTP publish).
    pub http_url: String,
    /// Where its output goes.
    pub log: PathBuf,
    /// `http://…` of the admin listener (gateways only; empty for the ceiling).
    pub admin_url: String,
    /// How to start it again on the same ports (gateways only).
    relaunch: Option<Command>,
    /// False once [`RouterProc::stop`] has reaped it (its pid may be reused).
    running: bool,
}

impl RouterProc {
    /// The last lines of its output (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl RouterProc {
    /// SIGTERM (the gateway drains its sessions), then SIGKILL after
    /// `grace`; returns how it ended. Blocking.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if !self.running {
            return None;
        }
        self.running = false;
        let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    /// Starts a stopped gateway again with the same configuration and
    /// ports, and waits until it is ready.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.running {
            bail!("the gateway is still running");
        }
        let cmd = self.relaunch.as_mut().context("only gateways can be restarted")?;
        let out = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        cmd.stdout(out.try_clone()?).stderr(out);
        self.child = cmd.spawn().context("restarting the gateway")?;
        self.pid = self.child.id();
        self.running = true;
        wait_ready(self, Duration::from_secs(30)).await
    }
}

impl Drop for RouterProc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A free loopback port (bound then released; good enough on a quiet box).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A sibling binary of this executable (`target/<profile>/NAME`), or `explicit`.
pub fn find_bin(explicit: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test executables live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let candidate = dir.join(name);
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "cannot find {name} next to {}; build it (cargo build --release -p {}) or pass its path",
        exe.display(),
        if name == "telegraphy-publish" {
            "telegraphy-publish"
        } else if name == "telegraphy-ceiling" {
            "telegraphy-bench"
        } else {
            "telegraphy-gateway"
        }
    )
}

/// What a generated gateway configuration contains.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    /// `memory://`, `redis://…`, `amqp://…`.
    pub bus: String,
    /// Redis key prefix / AMQP exchange (unique per run).
    pub namespace: String,
    /// HS256 secret for ticket sessions (also allows anonymous when None).
    pub jwt_secret: Option<String>,
    /// Allow anonymous sessions.
    pub allow_anonymous: bool,
    /// The API key for `POST /publish`.
    pub api_key: String,
    /// Extra `KEY=VALUE` environment for the gateway (TELEGRAPHY_…).
    pub env: Vec<(String, String)>,
    /// Keep the gateway's own connection limits (max_connections fitted to
    /// the open-files limit, pending-handshake and per-IP limits) instead
    /// of lifting them for a throughput run.
    pub production_limits: bool,
}

/// The role the benchmark's publisher token carries.
pub const PUBLISHER_ROLE: &str = "bench_publisher";

/// Writes the configuration for one node.
pub fn gateway_config(spec: &GatewaySpec, listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"# generated by telegraphy-bench
listen = "{listen}"
admin_listen = "{admin}"
bus = "{bus}"
realms = ["realm1"]
api_keys = ["{key}"]

[auth]
allow_anonymous = {anon}
expire_sessions = false

# Anonymous sessions (when allowed) may publish without a rate limit, so a
# WAMP publisher can drive the benchmark.
[roles.anonymous]
subscribe = ["*", "telegraphy.presence.*"]
publish = ["*"]
call = ["*", "telegraphy.presence.*"]
register = ["*"]

[roles.user]
subscribe = ["*"]

[roles.{PUBLISHER_ROLE}]
subscribe = ["*"]
publish = ["*"]

[redis]
key_prefix = "{ns}:"

[amqp]
exchange = "{ns}"

[log]
level = "warn"

[limits]
{limits}outbound_queue_messages = 8192
outbound_queue_bytes = 16777216
"#,
        limits = if spec.production_limits { "" } else { "max_connections = 1000000\nmax_pending_handshakes = 1000000\n" },
        bus = spec.bus,
        key = spec.api_key,
        anon = spec.allow_anonymous,
        ns = spec.namespace,
    )
}

/// Starts one gateway node and waits until `/readyz` answers 200 (new
/// ports and another try when a port picked was taken meanwhile).
pub async fn start_gateway(bin: &Path, spec: &GatewaySpec, dir: &Path, index: usize) -> anyhow::Result<RouterProc> {
    let mut attempt = 0;
    loop {
        match start_gateway_once(bin, spec, dir, index).await {
            Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => attempt += 1,
            r => return r,
        }
    }
}

async fn start_gateway_once(bin: &Path, spec: &GatewaySpec, dir: &Path, index: usize) -> anyhow::Result<RouterProc> {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config = dir.join(format!("gateway-{index}.toml"));
    std::fs::write(&config, gateway_config(spec, listen, admin))?;
    let log = dir.join(format!("gateway-{index}.log"));
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config);
    if let Some(secret) = &spec.jwt_secret {
        cmd.env("TELEGRAPHY_JWT_SECRET", secret);
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let out = std::fs::File::create(&log)?;
    cmd.stdout(out.try_clone()?).stderr(out).stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let mut relaunch = Command::new(bin);
    relaunch.arg("--config").arg(&config).envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?)))).stdin(Stdio::null());
    let mut proc = RouterProc {
        child,
        pid,
        ws_url: format!("ws://{listen}/ws"),
        http_url: format!("http://{listen}"),
        log,
        admin_url: format!("http://{admin}"),
        relaunch: Some(relaunch),
        running: true,
    };
    wait_ready(&mut proc, Duration::from_secs(20)).await?;
    Ok(proc)
}

/// Waits until the gateway's `/readyz` answers 200.
async fn wait_ready(proc: &mut RouterProc, within: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", proc.admin_url)).send().await {
            if r.status() == 200 {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            proc.running = false;
            bail!("the gateway exited ({status}) before it was ready:\n{}", std::fs::read_to_string(&proc.log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("the gateway was not ready within {within:?}; log: {}", proc.log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the ceiling program and waits until it accepts connections.
pub async fn start_ceiling(bin: &Path, dir: &Path) -> anyhow::Result<RouterProc> {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let log = dir.join("ceiling.log");
    let out = std::fs::File::create(&log)?;
    let child = Command::new(bin)
        .arg("--listen")
        .arg(listen.to_string())
        .stdout(out.try_clone()?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let mut proc = RouterProc {
        child,
        pid,
        ws_url: format!("ws://{listen}/ws"),
        http_url: format!("http://{listen}"),
        log: log.clone(),
        admin_url: String::new(),
        relaunch: None,
        running: true,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(proc);
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            proc.running = false;
            bail!("the ceiling program exited ({status}):\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("the ceiling program did not listen within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
