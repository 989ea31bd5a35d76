//! `telegraphy-bench`: the load generator and benchmark scenarios.
//!
//! Every scenario starts what it measures (Telegraphy gateway nodes with a
//! generated configuration, or the bare ceiling program), or runs against
//! an external router (`--target ws://…`, e.g. Crossbar.io, with
//! `--attach-pid` for its RSS/CPU). Results are printed and appended as
//! JSON lines (`--json FILE`). See `docs/benchmarks.md`.

// The modules are this binary's own; `pub` in them marks their interface.
#![allow(unreachable_pub)]

mod bare;
mod history;
mod load;
mod presence;
mod procstat;
mod router;
mod rpc;
mod scale;
mod wamp;
mod ws;

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use telegraphy_wamp::Serialization;

use load::{ClientSpec, Latency, PublishPath, PublishTargets, Workload};
use procstat::Sampler;
use router::{GatewaySpec, RouterProc};
use ws::Target;

#[derive(Parser)]
#[command(name = "telegraphy-bench", version, about = "Benchmarks Telegraphy (or any WAMP v2 router) on this machine")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Many subscribers on one topic; events published at a rate or as fast as possible.
    Fanout(LoadArgs),
    /// One topic per subscriber; events spread over the topics.
    ManyTopics(LoadArgs),
    /// The fan-out workload against the bare ceiling program (`telegraphy-ceiling`).
    Ceiling(LoadArgs),
    /// The many-topics workload consumed by a bare broker client instead
    /// of a gateway node: the ceiling of the bus path (`--bus redis|amqp`).
    BusCeiling(LoadArgs),
    /// Several gateway nodes on Redis or RabbitMQ; subscribers spread over them.
    Cluster(ClusterArgs),
    /// New sessions as fast as possible (or at a rate) until a target count.
    ConnectStorm(StormArgs),
    /// Many idle authenticated sessions: RSS per session.
    Idle(IdleArgs),
    /// 100,000 JWT sessions over several nodes on a bus: RSS, latency and
    /// losses at a steady rate, then every node restarted (see `scale.rs`).
    Scale(ScaleArgs),
    /// What keeping events costs: publish throughput with history on vs
    /// off, resume latency, memory per kept event (see `history.rs`).
    History(history::HistoryArgs),
    /// Remote procedure calls per second and their latency: WAMP callees,
    /// the HTTP callee (`--http`), or the HTTP endpoint alone (`--direct`).
    Calls(rpc::CallArgs),
    /// Presence across nodes: bus messages and bytes per session, and the
    /// time for a join to be seen on every node.
    Presence(presence::PresenceArgs),
    /// One worker process of `scale` (started by it; not for direct use).
    #[command(hide = true)]
    ScaleWorker(WorkerArgs),
}

#[derive(Args, Clone)]
struct Common {
    /// Run against an external router instead of starting one (repeat for several nodes).
    #[arg(long, value_name = "WS_URL")]
    target: Vec<String>,
    /// Pid(s) of the external router to sample for RSS and CPU.
    #[arg(long, value_name = "PID")]
    attach_pid: Vec<u32>,
    /// Pid(s) of broker processes (redis-server, ...) whose CPU is measured
    /// over the same window as the router's (repeat for each).
    #[arg(long, value_name = "PID")]
    broker_pid: Vec<u32>,
    /// Name of the router in the output (default: telegraphy, ceiling or external).
    #[arg(long)]
    label: Option<String>,
    /// Serializer of every session.
    #[arg(long, value_enum, default_value_t = Ser::Json)]
    serializer: Ser,
    /// How sessions authenticate: anonymous, or a JWT ticket (HS256).
    #[arg(long, value_enum)]
    auth: Option<AuthMode>,
    /// The HS256 secret of an external gateway (with --auth jwt --target …).
    #[arg(long, env = "TELEGRAPHY_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Append one JSON line per run to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Spread client connections over K source addresses 127.0.0.2 … (each gives 22,000 source ports).
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    /// Handshakes in flight at once while opening sessions.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Repeat the whole run (fresh router each time); the summary gives medians.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// The gateway binary (default: next to this one).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// The ceiling binary (default: next to this one).
    #[arg(long)]
    ceiling_bin: Option<PathBuf>,
    /// The telegraphy-publish binary (default: next to this one).
    #[arg(long)]
    cli_bin: Option<PathBuf>,
    /// Extra environment for started gateways, e.g. TELEGRAPHY_LIMITS__PING_INTERVAL=10s.
    #[arg(long, value_name = "KEY=VALUE")]
    gateway_env: Vec<String>,
    /// Redis key prefix / RabbitMQ exchange used by started gateways and bus publishers.
    #[arg(long, default_value = "telegraphy-bench")]
    namespace: String,
    /// External gateway's HTTP base URL (http publish path).
    #[arg(long)]
    http_url: Option<String>,
    /// API key for the http path (external gateways).
    #[arg(long, env = "TELEGRAPHY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Free-form note stored in the JSON line.
    #[arg(long, default_value = "")]
    note: String,
}

#[derive(Args, Clone)]
struct LoadArgs {
    #[command(flatten)]
    common: Common,
    /// Subscriber sessions (default: 1000; many-topics: 10000).
    #[arg(long, short = 'n')]
    subscribers: Option<usize>,
    /// Topics (default: 1; many-topics: one per subscriber).
    #[arg(long)]
    topics: Option<usize>,
    /// How events enter the router.
    #[arg(long, value_enum, default_value_t = PublishPath::Wamp)]
    publish: PublishPath,
    /// Events per second; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Max mode: events in flight (published, not yet delivered to all); 0 = about 64k deliveries.
    #[arg(long, default_value_t = 0)]
    window: usize,
    /// Padding bytes in each event's payload.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Latencies of events published in the first seconds are not recorded.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Bus of the started gateway (memory, redis, amqp, or a URL).
    #[arg(long, default_value = "memory")]
    bus: String,
}

#[derive(Args, Clone)]
struct ClusterArgs {
    #[command(flatten)]
    load: LoadArgs,
    /// Gateway nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
}

#[derive(Args, Clone)]
struct StormArgs {
    #[command(flatten)]
    common: Common,
    /// Sessions to open.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    sessions: usize,
    /// New sessions per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Also subscribe each session to one topic.
    #[arg(long)]
    subscribe: bool,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Sessions to hold open.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    sessions: usize,
    /// Seconds to let the router settle before reading its RSS.
    #[arg(long, default_value_t = 5.0)]
    settle: f64,
    /// Seconds to keep the sessions open afterwards (pings answered), checking none drops.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Do not subscribe (by default each session holds one subscription, as a browser would).
    #[arg(long)]
    no_subscribe: bool,
}

#[derive(Args, Clone)]
struct ScaleArgs {
    #[command(flatten)]
    common: Common,
    /// Sessions in all (each authenticated with a JWT and subscribed to one topic).
    #[arg(long, short = 'n', default_value_t = 100_000)]
    sessions: usize,
    /// Gateway nodes (each must hold sessions/nodes under its open-files limit).
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Worker processes holding the sessions (0: as many as the open-files limit needs).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Topics; session i takes topic i % topics, event s goes to topic s % topics.
    #[arg(long, default_value_t = 1000)]
    topics: usize,
    /// Events per second in the steady phases.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of the steady phase.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Seconds of the steady phase after the restart.
    #[arg(long, default_value_t = 10.0)]
    after_restart: f64,
    /// Latencies of events published in the first seconds of a phase are not recorded.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Padding bytes in each event.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Bus (redis, amqp, or a URL).
    #[arg(long, default_value = "redis")]
    bus: String,
    /// How events enter (redis or amqp straight onto the bus, http, or cli).
    #[arg(long, value_enum, default_value_t = PublishPath::Redis)]
    publish: PublishPath,
    /// A closed session reconnects after a random delay below this many seconds.
    #[arg(long, default_value_t = 5.0)]
    jitter: f64,
    /// Seconds to wait for every session to be up (at the start, and after the restart).
    #[arg(long, default_value_t = 300)]
    setup_timeout: u64,
    /// Skip the restart phase.
    #[arg(long)]
    no_restart: bool,
}

#[derive(Args, Clone)]
struct WorkerArgs {
    /// Gateway endpoints; session i goes to target i % count.
    #[arg(long = "target", required = true)]
    targets: Vec<String>,
    /// First session index.
    #[arg(long)]
    from: usize,
    /// One past the last session index.
    #[arg(long)]
    to: usize,
    /// Topics (session i subscribes to topic i % topics).
    #[arg(long)]
    topics: usize,
    /// json or msgpack.
    #[arg(long, default_value = "json")]
    serializer: String,
    /// Source addresses, round-robin.
    #[arg(long = "source")]
    sources: Vec<IpAddr>,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Reconnect jitter, seconds.
    #[arg(long, default_value_t = 5.0)]
    jitter: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ser {
    Json,
    Msgpack,
}

impl Ser {
    fn get(self) -> Serialization {
        match self {
            Ser::Json => Serialization::Json,
            Ser::Msgpack => Serialization::Msgpack,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthMode {
    Anonymous,
    Jwt,
}

enum Kind {
    Gateway { nodes: usize, bus: String, production_limits: bool },
    Ceiling,
}

/// The routers of one run (started here, or external).
struct Routers {
    _procs: Vec<RouterProc>,
    targets: Vec<Target>,
    pids: Vec<u32>,
    label: String,
    publish: PublishTargets,
    jwt_secret: Option<String>,
    dir: Option<PathBuf>,
}

impl Drop for Routers {
    fn drop(&mut self) {
        self._procs.clear();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn bus_url(bus: &str) -> String {
    match bus {
        "memory" => "memory://".into(),
        "redis" => "redis://127.0.0.1:6379/0".into(),
        "amqp" | "rabbitmq" => "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        url => url.into(),
    }
}

async fn routers(c: &Common, kind: Kind, jwt: bool) -> anyhow::Result<Routers> {
    if !c.target.is_empty() {
        let targets = c.target.iter().map(|t| Target::parse(t)).collect::<anyhow::Result<Vec<_>>>()?;
        if jwt && c.jwt_secret.is_none() {
            bail!("--auth jwt with --target needs the gateway's secret (--jwt-secret or TELEGRAPHY_JWT_SECRET)");
        }
        return Ok(Routers {
            _procs: Vec::new(),
            targets,
            pids: c.attach_pid.clone(),
            label: c.label.clone().unwrap_or_else(|| "external".into()),
            publish: PublishTargets {
                http_url: c.http_url.clone(),
                api_key: c.api_key.clone(),
                bus_url: None,
                namespace: c.namespace.clone(),
                cli_bin: router::find_bin(c.cli_bin.as_deref(), "telegraphy-publish").ok(),
            },
            jwt_secret: c.jwt_secret.clone(),
            dir: None,
        });
    }
    let dir = std::env::temp_dir().join(format!("telegraphy-bench-{:x}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir)?;
    let mut r = Routers {
        _procs: Vec::new(),
        targets: Vec::new(),
        pids: Vec::new(),
        label: String::new(),
        publish: PublishTargets::default(),
        jwt_secret: None,
        dir: Some(dir.clone()),
    };
    match kind {
        Kind::Ceiling => {
            let bin = router::find_bin(c.ceiling_bin.as_deref(), "telegraphy-ceiling")?;
            let p = router::start_ceiling(&bin, &dir).await?;
            r.targets.push(Target::parse(&p.ws_url)?);
            r.pids.push(p.pid);
            r._procs.push(p);
            r.label = c.label.clone().unwrap_or_else(|| "ceiling".into());
        }
        Kind::Gateway { nodes, bus, production_limits } => {
            let bin = router::find_bin(c.gateway_bin.as_deref(), "telegraphy-gateway")?;
            let secret = jwt.then(|| (0..32).map(|_| format!("{:02x}", fastrand::u8(..))).collect::<String>());
            let api_key = format!("bench-{:016x}", fastrand::u64(..));
            let env = c
                .gateway_env
                .iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).context("--gateway-env takes KEY=VALUE"))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let spec = GatewaySpec {
                bus: bus_url(&bus),
                namespace: c.namespace.clone(),
                jwt_secret: secret.clone(),
                allow_anonymous: !jwt,
                api_key: api_key.clone(),
                env,
                production_limits,
            };
            for i in 0..nodes {
                let p = router::start_gateway(&bin, &spec, &dir, i).await?;
                r.targets.push(Target::parse(&p.ws_url)?);
                r.pids.push(p.pid);
                r._procs.push(p);
            }
            r.publish = PublishTargets {
                http_url: Some(r._procs[0].http_url.clone()),
                api_key: Some(api_key),
                bus_url: Some(spec.bus.clone()),
                namespace: c.namespace.clone(),
                cli_bin: router::find_bin(c.cli_bin.as_deref(), "telegraphy-publish").ok(),
            };
            r.jwt_secret = secret;
            r.label = c.label.clone().unwrap_or_else(|| "telegraphy".into());
        }
    }
    Ok(r)
}

fn client_spec(c: &Common, r: &Routers) -> ClientSpec {
    ClientSpec {
        targets: r.targets.clone(),
        ser: c.serializer.get(),
        realm: "realm1".into(),
        jwt_secret: r.jwt_secret.clone(),
        // From 127.0.0.2 up: the routers listen on 127.0.0.1, so client
        // ports never collide with the ports picked for the next listeners.
        sources: (0..c.source_ips.clamp(1, 250)).map(|k| IpAddr::from([127, 0, 0, k + 2])).collect(),
        concurrency: c.concurrency,
    }
}

/// Raises the open-files limit as far as allowed; errors when `need` does not fit.
fn fd_budget(need: usize) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if need as u64 + 64 > soft {
        bail!(
            "{need} sessions need {need}+ open files, but this process may open {soft} (hard limit {hard}; \
             raising it needs CAP_SYS_RESOURCE). The router process has the same limit. Use fewer sessions."
        );
    }
    Ok(())
}

fn machine() -> serde_json::Value {
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn emit(c: &Common, mut line: serde_json::Value) -> anyhow::Result<()> {
    line["time"] = json!(utc_now());
    line["machine"] = machine();
    line["serializer"] = json!(c.serializer.get().label());
    line["note"] = json!(c.note);
    if let Some(path) = &c.json {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("{}", path.display()))?;
        writeln!(f, "{line}")?;
    }
    Ok(())
}

/// Other processes taking more CPU than this (percent of one core) during a
/// run make its figures suspect; the run is flagged.
const OTHER_CPU_WARN: f64 = 20.0;

/// Prints how the machine's CPU was spent during a run (percent of one
/// core), warns when other processes took a share that disturbs the
/// figures, and returns the same as the JSON line's `machine_cpu`.
fn machine_cpu_line(machine: f64, bench: f64, router: f64) -> serde_json::Value {
    let other = (machine - bench - router).max(0.0);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("  machine CPU {machine:.0}% of {cores} cores: load generator {bench:.0}%, router {router:.0}%, other processes {other:.0}%");
    if other > OTHER_CPU_WARN {
        println!("  WARNING: other processes took {other:.0}% CPU during this run: its figures are disturbed");
    }
    serde_json::json!({"total_pct": machine, "bench_pct": bench, "router_pct": router, "other_pct": other})
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0} ")
    }
}

fn lat(l: &Latency) -> String {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    format!("p50 {} · p90 {} · p99 {} · max {} ms ({} samples)", ms(l.p50), ms(l.p90), ms(l.p99), ms(l.max), l.count)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(cli.scenario))
}

async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Fanout(a) => load_scenario("fanout", a, 1, false).await,
        Scenario::ManyTopics(a) => load_scenario("many-topics", a, 1, false).await,
        Scenario::Ceiling(a) => load_scenario("fanout", a, 1, true).await,
        Scenario::BusCeiling(a) => bus_ceiling(a).await,
        Scenario::Cluster(a) => load_scenario("cluster", a.load, a.nodes, false).await,
        Scenario::ConnectStorm(a) => storm(a).await,
        Scenario::Idle(a) => idle(a).await,
        Scenario::Scale(a) => scale::run(a).await,
        Scenario::ScaleWorker(a) => scale::worker(a).await,
        Scenario::History(a) => history::run(a).await,
        Scenario::Calls(a) => rpc::run(a).await,
        Scenario::Presence(a) => presence::run(a).await,
    }
}

async fn load_scenario(name: &str, a: LoadArgs, nodes: usize, ceiling: bool) -> anyhow::Result<()> {
    let c = &a.common;
    let subscribers = a.subscribers.unwrap_or(if name == "many-topics" { 10_000 } else { 1000 });
    let topics = a.topics.unwrap_or(if name == "many-topics" { subscribers } else { 1 }).max(1);
    fd_budget(subscribers + 16)?;
    let bus = if name == "cluster" && a.bus == "memory" { "redis".to_string() } else { a.bus.clone() };
    let path = if name == "cluster" && a.publish == PublishPath::Wamp && std::env::args().all(|x| !x.starts_with("--publish")) {
        if bus_url(&bus).starts_with("amqp") {
            PublishPath::Amqp
        } else {
            PublishPath::Redis
        }
    } else {
        a.publish
    };
    let w = Workload {
        subscribers,
        topics,
        path,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        window: a.window,
        payload: a.payload,
        warmup: Duration::from_secs_f64(a.warmup.min(a.duration / 2.0)),
    };
    let mut rates = Vec::new();
    let mut p99s = Vec::new();
    for run in 0..c.runs.max(1) {
        let kind = if ceiling { Kind::Ceiling } else { Kind::Gateway { nodes, bus: bus.clone(), production_limits: false } };
        let r = routers(c, kind, c.auth == Some(AuthMode::Jwt)).await?;
        let spec = client_spec(c, &r);
        let sampler = Sampler::start(r.pids.clone(), Duration::from_millis(100));
        let mut marks: Vec<(String, Instant, Option<procstat::Sample>, procstat::CpuMark)> = Vec::new();
        let mut broker_marks: Vec<(String, Instant, Vec<f64>)> = Vec::new();
        let broker_cpu =
            |pids: &[u32]| pids.iter().map(|&p| procstat::read(p, procstat::clock_ticks()).map_or(0.0, |(cpu, _)| cpu)).collect::<Vec<f64>>();
        let before = sampler.now();
        let t_start = Instant::now();
        let result = match load::run(&spec, &w, &r.publish, |phase| {
            broker_marks.push((phase.to_string(), Instant::now(), broker_cpu(&c.broker_pid)));
            marks.push((phase.to_string(), Instant::now(), sampler.now(), procstat::CpuMark::now()))
        })
        .await
        {
            Ok(x) => x,
            Err(e) => {
                for p in &r._procs {
                    eprintln!("router log ({}):\n{}", p.log.display(), p.log_tail());
                }
                return Err(e);
            }
        };
        let find = |p: &str| marks.iter().find(|m| m.0 == p).cloned();
        let (pub_mark, done_mark) = (find("publish"), find("done"));
        let cpu = match (&pub_mark, &done_mark) {
            (Some((_, _, Some(a), _)), Some((_, _, Some(b), _))) => procstat::cpu_pct(a, b),
            _ => 0.0,
        };
        let (machine_cpu, bench_cpu) = match (&pub_mark, &done_mark) {
            (Some(a), Some(b)) => procstat::machine_pct(&a.3, &b.3),
            _ => (0.0, 0.0),
        };
        // Each broker process's CPU over the same window (% of one core).
        let brokers: Vec<f64> = match (broker_marks.iter().find(|m| m.0 == "publish"), broker_marks.iter().find(|m| m.0 == "done")) {
            (Some(a), Some(b)) => {
                let dt = b.1.duration_since(a.1).as_secs_f64().max(1e-9);
                a.2.iter().zip(&b.2).map(|(x, y)| 100.0 * (y - x) / dt).collect()
            }
            _ => Vec::new(),
        };
        if !brokers.is_empty() {
            let shown: Vec<String> = brokers.iter().map(|b| format!("{b:.0}%")).collect();
            println!("  broker CPU {} (total {:.0}%)", shown.join(" + "), brokers.iter().sum::<f64>());
        }
        let rss_idle = pub_mark.as_ref().and_then(|m| m.2).map(|s| s.rss_kib).unwrap_or(0);
        let rss_peak = match (&pub_mark, &done_mark) {
            (Some(p), Some(d)) => sampler.peak_rss(p.1, d.1).unwrap_or(0).max(d.2.map(|s| s.rss_kib).unwrap_or(0)),
            _ => 0,
        };
        let rss_start = before.map(|s| s.rss_kib).unwrap_or(0);
        let _ = t_start;
        let mode = if w.rate > 0.0 { format!("{} events/s", w.rate) } else { "max".to_string() };
        println!(
            "{name} · {} · {} · publish {:?} · {} subscribers · {} topic(s) · {} nodes · {mode} · run {}/{}",
            r.label,
            c.serializer.get().label(),
            w.path,
            result.subscribers,
            topics,
            r.targets.len(),
            run + 1,
            c.runs.max(1)
        );
        println!(
            "  events {} ({}/s) · delivered {} of {} (lost {}) in {:.2} s → {}deliveries/s",
            result.events,
            si(result.events_per_s),
            result.delivered,
            result.expected,
            result.lost,
            result.elapsed_s,
            si(result.delivered_per_s)
        );
        println!("  latency {}", lat(&result.latency_us));
        if !r.pids.is_empty() {
            println!(
                "  router CPU {:.0}% (of one core) · RSS {} before sessions, {} with sessions, peak {}",
                cpu,
                mib(rss_start),
                mib(rss_idle),
                mib(rss_peak)
            );
        }
        let machine_cpu = machine_cpu_line(machine_cpu, bench_cpu, cpu);
        if result.disconnects + result.publish_errors + result.window_timeouts > 0 {
            println!(
                "  problems: {} subscriber disconnects, {} publish errors, {} window timeouts",
                result.disconnects, result.publish_errors, result.window_timeouts
            );
        }
        rates.push(result.delivered_per_s);
        p99s.push(result.latency_us.p99 as f64);
        emit(
            c,
            json!({
                "scenario": name,
                "label": r.label,
                "publish": w.path,
                "subscribers": result.subscribers,
                "topics": topics,
                "nodes": r.targets.len(),
                "bus": if c.target.is_empty() && !ceiling { bus_url(&bus).split("://").next().unwrap_or("").to_string() } else { String::new() },
                "auth": if c.auth == Some(AuthMode::Jwt) { "jwt" } else { "anonymous" },
                "rate": w.rate,
                "duration_s": a.duration,
                "window": w.window,
                "payload": w.payload,
                "run": run + 1,
                "result": result,
                "router": {"cpu_pct": cpu, "rss_start_kib": rss_start, "rss_sessions_kib": rss_idle, "rss_peak_kib": rss_peak, "pids": r.pids},
                "brokers": {"cpu_pct": brokers, "pids": c.broker_pid},
                "bus_url": if c.target.is_empty() && !ceiling { telegraphy_bus::redact(&bus_url(&bus)) } else { String::new() },
                "machine_cpu": machine_cpu,
            }),
        )?;
        drop(r);
        if run + 1 < c.runs {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    if rates.len() > 1 {
        println!("median of {} runs: {}deliveries/s, p99 {:.2} ms", rates.len(), si(median(rates)), median(p99s) / 1000.0);
    }
    Ok(())
}

async fn bus_ceiling(a: LoadArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let n = a.topics.or(a.subscribers).unwrap_or(10_000).max(1);
    let url = bus_url(&a.bus);
    let path = if url.starts_with("amqp") {
        PublishPath::Amqp
    } else if url.starts_with("redis") {
        PublishPath::Redis
    } else {
        bail!("bus-ceiling measures a broker: --bus redis or --bus amqp");
    };
    let w = Workload {
        subscribers: n,
        topics: n,
        path,
        rate: a.rate,
        duration: Duration::from_secs_f64(a.duration),
        window: a.window,
        payload: a.payload,
        warmup: Duration::from_secs_f64(a.warmup.min(a.duration / 2.0)),
    };
    let spec =
        ClientSpec { targets: Vec::new(), ser: c.serializer.get(), realm: "realm1".into(), jwt_secret: None, sources: Vec::new(), concurrency: 1 };
    let to = PublishTargets { bus_url: Some(url.clone()), namespace: c.namespace.clone(), ..PublishTargets::default() };
    let mut rates = Vec::new();
    for run in 0..c.runs.max(1) {
        let shared = load::Shared::new();
        let topics: Vec<String> = (0..n).map(|k| w.topic(k)).collect();
        let t_setup = Instant::now();
        let reader = bare::consume(&url, &c.namespace, &topics, shared.clone()).await?;
        let setup_s = t_setup.elapsed().as_secs_f64();
        let m0 = procstat::CpuMark::now();
        let result = load::measure(&spec, &w, &to, &shared, &vec![1; n], &mut |_| {}).await;
        let (machine_cpu, bench_cpu) = procstat::machine_pct(&m0, &procstat::CpuMark::now());
        reader.abort();
        let result = load::LoadResult { setup_s, ..result? };
        println!("many-topics · broker alone (bare consumer) · publish {:?} · {n} topics · run {}/{}", w.path, run + 1, c.runs.max(1));
        println!(
            "  events {} ({}/s) · consumed {} of {} (lost {}) in {:.2} s → {}events/s",
            result.events,
            si(result.events_per_s),
            result.delivered,
            result.expected,
            result.lost,
            result.elapsed_s,
            si(result.delivered_per_s)
        );
        println!("  latency {}", lat(&result.latency_us));
        let machine_cpu = machine_cpu_line(machine_cpu, bench_cpu, 0.0);
        rates.push(result.delivered_per_s);
        emit(
            c,
            json!({
                "scenario": "many-topics",
                "label": "broker",
                "publish": w.path,
                "subscribers": n,
                "topics": n,
                "nodes": 0,
                "bus": url.split("://").next().unwrap_or(""),
                "rate": w.rate,
                "duration_s": a.duration,
                "window": w.window,
                "payload": w.payload,
                "run": run + 1,
                "result": result,
                "machine_cpu": machine_cpu,
            }),
        )?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if rates.len() > 1 {
        println!("median of {} runs: {}events/s", rates.len(), si(median(rates)));
    }
    Ok(())
}

async fn storm(a: StormArgs) -> anyhow::Result<()> {
    let c = &a.common;
    fd_budget(a.sessions)?;
    let mut rates = Vec::new();
    for run in 0..c.runs.max(1) {
        let r = routers(c, Kind::Gateway { nodes: 1, bus: "memory".into(), production_limits: false }, c.auth == Some(AuthMode::Jwt)).await?;
        let spec = client_spec(c, &r);
        let sampler = Sampler::start(r.pids.clone(), Duration::from_millis(100));
        let before = sampler.now();
        let mark0 = procstat::CpuMark::now();
        let topic: Option<Arc<dyn Fn(usize) -> String + Send + Sync>> =
            a.subscribe.then(|| Arc::new(|_| "bench.storm".to_string()) as Arc<dyn Fn(usize) -> String + Send + Sync>);
        let opened = load::open_sessions(&spec, 0..a.sessions, topic, a.rate, Duration::from_secs(60)).await?;
        let after = sampler.now();
        let (machine_cpu, bench_cpu) = procstat::machine_pct(&mark0, &procstat::CpuMark::now());
        let ok = opened.sessions.len();
        let per_s = ok as f64 / opened.elapsed.as_secs_f64();
        let cpu = match (&before, &after) {
            (Some(x), Some(y)) => procstat::cpu_pct(x, y),
            _ => 0.0,
        };
        let h = Latency::of(&opened.handshake);
        println!(
            "connect-storm · {} · {} · {} · run {}/{}",
            r.label,
            c.serializer.get().label(),
            if c.auth == Some(AuthMode::Jwt) { "jwt" } else { "anonymous" },
            run + 1,
            c.runs.max(1)
        );
        println!(
            "  {ok} of {} sessions{} in {:.2} s → {}sessions/s ({} failed{})",
            a.sessions,
            if a.subscribe { " (subscribed)" } else { "" },
            opened.elapsed.as_secs_f64(),
            si(per_s),
            opened.failures,
            opened.first_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
        );
        println!("  handshake latency {}", lat(&h));
        if let (Some(b), Some(x)) = (before, after) {
            println!("  router CPU {:.0}% · RSS {} → {}", cpu, mib(b.rss_kib), mib(x.rss_kib));
        }
        let machine_cpu = machine_cpu_line(machine_cpu, bench_cpu, cpu);
        rates.push(per_s);
        emit(
            c,
            json!({
                "scenario": "connect-storm",
                "label": r.label,
                "auth": if c.auth == Some(AuthMode::Jwt) { "jwt" } else { "anonymous" },
                "sessions": a.sessions,
                "rate": a.rate,
                "subscribe": a.subscribe,
                "concurrency": c.concurrency,
                "run": run + 1,
                "result": {
                    "opened": ok, "failures": opened.failures, "first_error": opened.first_error,
                    "elapsed_s": opened.elapsed.as_secs_f64(), "sessions_per_s": per_s, "handshake_us": h,
                },
                "router": {"cpu_pct": cpu, "rss_start_kib": before.map(|s| s.rss_kib), "rss_end_kib": after.map(|s| s.rss_kib), "pids": r.pids},
                "machine_cpu": machine_cpu,
            }),
        )?;
        let sessions = opened.sessions;
        drop(sessions);
        drop(r);
    }
    if rates.len() > 1 {
        println!("median of {} runs: {}sessions/s", rates.len(), si(median(rates)));
    }
    Ok(())
}

async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let c = &a.common;
    fd_budget(a.sessions)?;
    let jwt = c.auth != Some(AuthMode::Anonymous);
    let mut per = Vec::new();
    for run in 0..c.runs.max(1) {
        let r = routers(c, Kind::Gateway { nodes: 1, bus: "memory".into(), production_limits: false }, jwt).await?;
        let spec = client_spec(c, &r);
        let sampler = Sampler::start(r.pids.clone(), Duration::from_millis(200));
        let shared = load::Shared::new();
        let topic: Option<Arc<dyn Fn(usize) -> String + Send + Sync>> =
            (!a.no_subscribe).then(|| Arc::new(|_| "bench.idle".to_string()) as Arc<dyn Fn(usize) -> String + Send + Sync>);
        // A first session warms the router up (threads, allocator arenas) before the baseline.
        let warm = load::open_sessions(&spec, 0..1, topic.clone(), 0.0, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs_f64(a.settle.min(2.0))).await;
        let rss0 = settled_rss(&sampler).await;
        let half = a.sessions / 2;
        let mut tasks = tokio::task::JoinSet::new();
        let mut failures = 0;
        let t0 = Instant::now();
        let first = load::open_sessions(&spec, 1..1 + half, topic.clone(), 0.0, Duration::from_secs(60)).await?;
        failures += first.failures;
        let n_half = first.sessions.len();
        for (_, s) in first.sessions {
            tasks.spawn(load::idle(s, shared.clone()));
        }
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        let rss_half = settled_rss(&sampler).await;
        let second = load::open_sessions(&spec, 1 + half..1 + a.sessions, topic.clone(), 0.0, Duration::from_secs(60)).await?;
        failures += second.failures;
        let first_error = second.first_error.clone().or(first.first_error.clone());
        let n_all = n_half + second.sessions.len();
        for (_, s) in second.sessions {
            tasks.spawn(load::idle(s, shared.clone()));
        }
        let open_s = t0.elapsed().as_secs_f64() - a.settle;
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        let rss_all = settled_rss(&sampler).await;
        if a.hold > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(a.hold)).await;
        }
        let dropped = shared.disconnects.load(std::sync::atomic::Ordering::Relaxed);
        let per_session = (rss_all.saturating_sub(rss0)) as f64 / n_all.max(1) as f64;
        let marginal = (rss_all.saturating_sub(rss_half)) as f64 / (n_all - n_half).max(1) as f64;
        println!(
            "idle · {} · {} · {} · {}subscribed · run {}/{}",
            r.label,
            c.serializer.get().label(),
            if jwt { "jwt" } else { "anonymous" },
            if a.no_subscribe { "not " } else { "" },
            run + 1,
            c.runs.max(1)
        );
        println!(
            "  {n_all} sessions open ({failures} failed{}) in {open_s:.1} s; {dropped} dropped{}",
            first_error.map(|e| format!(": {e}")).unwrap_or_default(),
            if a.hold > 0.0 { format!(" while held {:.0} s", a.hold) } else { String::new() }
        );
        println!(
            "  router RSS {} → {} (at {n_half}) → {} (at {n_all}): {:.2} KiB per session overall, {:.2} KiB marginal",
            mib(rss0),
            mib(rss_half),
            mib(rss_all),
            per_session,
            marginal
        );
        per.push(marginal);
        emit(
            c,
            json!({
                "scenario": "idle",
                "label": r.label,
                "auth": if jwt { "jwt" } else { "anonymous" },
                "sessions": a.sessions,
                "subscribe": !a.no_subscribe,
                "run": run + 1,
                "result": {
                    "opened": n_all, "failures": failures, "dropped": dropped, "open_s": open_s,
                    "rss_base_kib": rss0, "rss_half_kib": rss_half, "rss_all_kib": rss_all,
                    "kib_per_session": per_session, "kib_per_session_marginal": marginal,
                },
                "router": {"pids": r.pids},
            }),
        )?;
        tasks.abort_all();
        drop(warm);
        drop(r);
    }
    if per.len() > 1 {
        println!("median of {} runs: {:.2} KiB per session (marginal)", per.len(), median(per));
    }
    Ok(())
}

/// The lowest of a few RSS readings (the allocator may still be returning memory).
async fn settled_rss(s: &Sampler) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..5 {
        if let Some(x) = s.now() {
            best = best.min(x.rss_kib);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if best == u64::MAX {
        0
    } else {
        best
    }
}
