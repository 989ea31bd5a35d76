//! `telegraphy-bench history …`: what keeping events costs
//! (docs/benchmarks.md, "History: what keeping events costs").
//!
//! - `throughput --bus redis`: the bus publisher path alone
//!   (`telegraphy_bus::connect_publisher` + `publish_batch`, windows of
//!   256, as `telegraphy-publish --stdin` does) on a topic that keeps
//!   history against one that does not, in alternating phases of one run.
//!   The history settings are written into Redis here (`{prefix}history`,
//!   as a gateway node does), under a key prefix of this run only; every
//!   key of that prefix is deleted at the end.
//! - `throughput --bus amqp`: the same publisher path and alternation
//!   against the machine's RabbitMQ, onto an exchange of this run only. On
//!   RabbitMQ history costs something only once the stream
//!   `{exchange}.history` exists, is bound to the exchange and is read,
//!   which a gateway node does: one node with `[history] topics` is started
//!   here and nobody subscribes, so a history topic's event is written to
//!   the stream and read back by the node, a live-only one is routed
//!   nowhere. Between phases (outside the timing) the harness waits until
//!   the node read every event of the phase. At the end the exchange and
//!   the two streams (`{exchange}.history`, `{exchange}.history-epoch`) are
//!   deleted, also after an error or SIGINT/SIGTERM.
//! - `throughput --bus memory`: one gateway started here, WAMP publishers
//!   with `acknowledge`, a history topic against a live-only one, same
//!   alternation.
//! - `resume`: N events published on a history topic, then many fresh
//!   sessions SUBSCRIBE with `_after_publication` = the id just before
//!   them; the time from sending SUBSCRIBE to the `_recovered` marker. On
//!   RabbitMQ the ids come from a subscriber's EVENTs (there PUBLISHED's id
//!   is not the event's position), and the run's exchange and streams are
//!   deleted at the end.
//! - `memory`: RSS growth of a fresh gateway for topics × events kept,
//!   against the same events published to live-only topics, and the
//!   gateway's own `telegraphy_history_held_events` / `_held_bytes`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use serde_json::json;
use telegraphy_bus::{Delivery, Envelope, Filter, Position};
use telegraphy_wamp::{Dict, Message, Serialization, Value};

use crate::load::{self, now_us, ClientSpec, Latency};
use crate::procstat::{self, CpuMark, Sampler};
use crate::wamp::{self, BenchEvent, Incoming, Session};
use crate::ws::{self, op};
use crate::{client_spec, emit, median, routers, settled_rss, si, Common, Kind};

/// What `history` measures.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// Publish throughput with history on against off (`--bus redis|amqp|memory`).
    Throughput,
    /// Resume latency: SUBSCRIBE with `_after_publication` to the `_recovered` marker.
    Resume,
    /// Gateway memory per kept event (memory://).
    Memory,
    /// The memory:// store's append alone, in this process, and its parts
    /// (envelope encode, clone): where the gateway's extra CPU goes.
    Store,
}

#[derive(Args, Clone)]
pub struct HistoryArgs {
    /// Which measurement.
    #[arg(value_enum)]
    what: What,
    #[command(flatten)]
    common: Common,
    /// Bus: memory (a gateway started here), redis (127.0.0.1:6379, or a redis:// URL)
    /// or amqp (guest@127.0.0.1:5672, or an amqp:// URL).
    #[arg(long, default_value = "memory")]
    bus: String,
    /// Throughput: rounds of (history on, history off), alternating which goes first.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Throughput: seconds of each phase.
    #[arg(long, default_value_t = 3.0)]
    phase: f64,
    /// Throughput on Redis and RabbitMQ: events per `publish_batch` (one window in flight).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Throughput on memory://: WAMP publisher sessions.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// WAMP publishers: unacknowledged PUBLISHes each keeps in flight.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Throughput on memory://: subscriber sessions on each of the two topics.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Padding bytes in each event (args = [published_at_µs, seq, padding]).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Resume: events published after the resume point (all replayed by each resume).
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Resume: how many resumes (each on a fresh session).
    #[arg(long, default_value_t = 200)]
    resumes: usize,
    /// `history.size` of the gateway (events kept per topic).
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// `history.max_replay` of the gateway.
    #[arg(long, default_value_t = 1000)]
    max_replay: usize,
    /// Memory: topics that keep events.
    #[arg(long, default_value_t = 100)]
    topics: usize,
    /// Memory: events kept per topic.
    #[arg(long, default_value_t = 1000)]
    per_topic: usize,
}

/// Topics whose name starts with this keep history in every gateway and
/// Redis hash this scenario sets up; `bench.live.` topics do not.
const HISTORY_PATTERN: &str = "bench.hist.*";

fn history_env(a: &HistoryArgs) -> Vec<String> {
    vec![
        format!("TELEGRAPHY_HISTORY__TOPICS={HISTORY_PATTERN}"),
        format!("TELEGRAPHY_HISTORY__SIZE={}", a.size),
        format!("TELEGRAPHY_HISTORY__MAX_REPLAY={}", a.max_replay),
        // Nothing expires during a run.
        "TELEGRAPHY_HISTORY__TTL=1h".to_string(),
    ]
}

/// A gateway (or several runs' worth of them) with history settings and,
/// on Redis, a key prefix of its own.
fn gateway_common(a: &HistoryArgs, namespace: &str) -> Common {
    let mut c = a.common.clone();
    c.gateway_env.extend(history_env(a));
    c.namespace = namespace.to_string();
    c
}

fn unique_namespace(base: &str) -> String {
    format!("{base}-hist-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

pub async fn run(a: HistoryArgs) -> anyhow::Result<()> {
    let url = crate::bus_url(&a.bus);
    let (redis, amqp) = (url.starts_with("redis"), url.starts_with("amqp"));
    if !redis && !amqp && !url.starts_with("memory") && a.what != What::Store {
        bail!("history is kept on memory://, redis:// and amqp:// (--bus memory, redis or amqp), not on {url}");
    }
    match a.what {
        What::Throughput if redis => throughput_redis(&a).await,
        What::Throughput if amqp => throughput_amqp(&a).await,
        What::Throughput => throughput_memory(&a).await,
        What::Resume => resume(&a).await,
        What::Memory if redis || amqp => bail!("`history memory` measures the gateway's own store: --bus memory"),
        What::Memory => memory(&a).await,
        What::Store => store(&a).await,
    }
}

// ---------------------------------------------------------------- Redis

/// `INFO commandstats` of the Redis server: command → (calls, µs).
async fn commandstats(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let text: String = redis::cmd("INFO").arg("commandstats").query_async(conn).await?;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else { continue };
        let Some((name, fields)) = rest.split_once(':') else { continue };
        let field = |k: &str| fields.split(',').find_map(|f| f.strip_prefix(k)?.strip_prefix('=')?.parse::<u64>().ok()).unwrap_or(0);
        out.insert(name.to_string(), (field("calls"), field("usec")));
    }
    Ok(out)
}

/// Per-command (calls, µs) between two readings.
fn stats_delta(a: &BTreeMap<String, (u64, u64)>, b: &BTreeMap<String, (u64, u64)>) -> BTreeMap<String, (u64, u64)> {
    b.iter()
        .filter_map(|(k, &(calls, us))| {
            let (c0, u0) = a.get(k).copied().unwrap_or((0, 0));
            (calls > c0).then(|| (k.clone(), (calls - c0, us.saturating_sub(u0))))
        })
        .collect()
}

async fn redis_pid(conn: &mut redis::aio::MultiplexedConnection) -> Option<u32> {
    let text: String = redis::cmd("INFO").arg("server").query_async(conn).await.ok()?;
    text.lines().find_map(|l| l.strip_prefix("process_id:")?.trim().parse().ok())
}

/// Deletes every key of `prefix` (this run's own).
async fn delete_prefix(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> anyhow::Result<u64> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(format!("{prefix}*")).arg("COUNT").arg(1000).query_async(conn).await?;
        let keys: Vec<String> = keys.into_iter().filter(|k| k.starts_with(prefix)).collect();
        if !keys.is_empty() {
            let n: u64 = redis::cmd("DEL").arg(&keys).query_async(conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

fn bench_envelope(topic: &str, seq: u64, pad: &str) -> Envelope {
    Envelope {
        realm: "realm1".into(),
        publication: fastrand::u64(1..=telegraphy_wamp::MAX_ID),
        topic: topic.into(),
        args: wamp::event_args(now_us(), seq, pad),
        kwargs: Dict::new(),
        filter: Filter::default(),
        publisher: None,
        published_at_us: now_us(),
        retain: false,
        position: None,
    }
}

struct Phase {
    events: u64,
    errors: u64,
    elapsed_s: f64,
    per_s: f64,
    /// CPU seconds of the Redis server, RabbitMQ (or the gateway) during the phase.
    server_cpu_s: f64,
    /// RabbitMQ: CPU seconds of the gateway node (reading the stream) during the phase.
    node_cpu_s: Option<f64>,
    bench_cpu_s: f64,
    machine_pct: f64,
    extra: serde_json::Value,
}

impl Phase {
    /// CPU other processes took during the phase, percent of one core.
    fn other_pct(&self) -> f64 {
        let ours = self.bench_cpu_s + self.server_cpu_s + self.node_cpu_s.unwrap_or(0.0);
        (self.machine_pct - 100.0 * ours / self.elapsed_s).max(0.0)
    }

    fn json(&self) -> serde_json::Value {
        let per = |s: f64| if self.events > 0 { s * 1e6 / self.events as f64 } else { 0.0 };
        let (m, b, srv) = (self.machine_pct, 100.0 * self.bench_cpu_s / self.elapsed_s, 100.0 * self.server_cpu_s / self.elapsed_s);
        let mut v = json!({
            "events": self.events, "errors": self.errors, "elapsed_s": self.elapsed_s, "events_per_s": self.per_s,
            "server_cpu_us_per_event": per(self.server_cpu_s), "bench_cpu_us_per_event": per(self.bench_cpu_s),
            "machine_cpu": {"total_pct": m, "bench_pct": b, "server_pct": srv, "other_pct": self.other_pct()},
            "detail": self.extra,
        });
        if let Some(node) = self.node_cpu_s {
            v["node_cpu_us_per_event"] = json!(per(node));
            v["machine_cpu"]["node_pct"] = json!(100.0 * node / self.elapsed_s);
        }
        v
    }
}

/// System calls and context switches of a process so far (all its threads).
#[derive(Default, Clone, Copy)]
struct Counters {
    /// Read-like and write-like system calls (`/proc/PID/io` syscr, syscw).
    syscr: u64,
    syscw: u64,
    /// Context switches, voluntary (the thread waited) and not, over every thread.
    voluntary: u64,
    involuntary: u64,
}

fn counters(pid: u32) -> Counters {
    let mut c = Counters::default();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |text: &str, k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok()).unwrap_or(0);
    c.syscr = field(&io, "syscr:");
    c.syscw = field(&io, "syscw:");
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            c.voluntary += field(&status, "voluntary_ctxt_switches:");
            c.involuntary += field(&status, "nonvoluntary_ctxt_switches:");
        }
    }
    c
}

/// Counters between two readings, per event.
fn counters_json(a: Counters, b: Counters, events: u64) -> serde_json::Value {
    let per = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / events.max(1) as f64;
    json!({
        "read_syscalls_per_event": per(a.syscr, b.syscr), "write_syscalls_per_event": per(a.syscw, b.syscw),
        "voluntary_switches_per_event": per(a.voluntary, b.voluntary), "involuntary_switches_per_event": per(a.involuntary, b.involuntary),
    })
}

/// Publishes `window` events at a time to `topic` until `until`, one
/// `publish_batch` in flight (as `telegraphy-publish --stdin` does):
/// (events the bus accepted, events it refused).
async fn publish_batches(bus: &dyn telegraphy_bus::Bus, topic: &str, window: usize, until: Instant, pad: &str) -> (u64, u64) {
    let (mut events, mut errors, mut seq) = (0u64, 0u64, 0u64);
    while Instant::now() < until {
        let batch: Vec<Envelope> = (0..window)
            .map(|_| {
                seq += 1;
                bench_envelope(topic, seq, pad)
            })
            .collect();
        for answer in bus.publish_batch(batch, Delivery::Accepted).await {
            match answer {
                Ok(_) => events += 1,
                Err(_) => errors += 1,
            }
        }
    }
    (events, errors)
}

async fn redis_phase(
    bus: &dyn telegraphy_bus::Bus,
    conn: &mut redis::aio::MultiplexedConnection,
    pid: Option<u32>,
    topic: &str,
    window: usize,
    secs: f64,
    pad: &str,
) -> anyhow::Result<Phase> {
    let ticks = procstat::clock_ticks();
    let stats0 = commandstats(conn).await?;
    let cpu0 = pid.and_then(|p| procstat::read(p, ticks)).map_or(0.0, |x| x.0);
    let (srv0, me0) = (pid.map(counters).unwrap_or_default(), counters(std::process::id()));
    let m0 = CpuMark::now();
    let t0 = Instant::now();
    let (events, errors) = publish_batches(bus, topic, window, t0 + Duration::from_secs_f64(secs), pad).await;
    let elapsed_s = t0.elapsed().as_secs_f64();
    let m1 = CpuMark::now();
    let cpu1 = pid.and_then(|p| procstat::read(p, ticks)).map_or(0.0, |x| x.0);
    let (srv1, me1) = (pid.map(counters).unwrap_or_default(), counters(std::process::id()));
    let stats1 = commandstats(conn).await?;
    let (machine_pct, bench_pct) = procstat::machine_pct(&m0, &m1);
    let delta = stats_delta(&stats0, &stats1);
    let commands: serde_json::Map<String, serde_json::Value> = delta
        .iter()
        .filter(|(k, _)| k.as_str() != "info")
        .map(|(k, &(calls, us))| (k.clone(), json!({"calls": calls, "usec": us, "usec_per_event": us as f64 / events.max(1) as f64})))
        .collect();
    Ok(Phase {
        events,
        errors,
        elapsed_s,
        per_s: events as f64 / elapsed_s,
        server_cpu_s: cpu1 - cpu0,
        node_cpu_s: None,
        bench_cpu_s: bench_pct * elapsed_s / 100.0,
        machine_pct,
        extra: json!({
            "redis_commandstats": commands,
            "redis_process": counters_json(srv0, srv1, events),
            "bench_process": counters_json(me0, me1, events),
        }),
    })
}

async fn throughput_redis(a: &HistoryArgs) -> anyhow::Result<()> {
    let url = crate::bus_url(&a.bus);
    let ns = unique_namespace(&a.common.namespace);
    let prefix = format!("{ns}:");
    let client = redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await.context("connecting to Redis")?;
    // What a gateway node writes when it connects (bus/src/redis.rs,
    // write_history_settings): the publish script reads it.
    redis::cmd("HSET")
        .arg(format!("{prefix}history"))
        .arg("topics")
        .arg(HISTORY_PATTERN)
        .arg("size")
        .arg(a.size)
        .arg("ttl_ms")
        .arg(3_600_000u64)
        .query_async::<()>(&mut conn)
        .await?;
    let result = throughput_redis_rounds(a, &url, &prefix, &mut conn).await;
    let deleted = delete_prefix(&mut conn, &prefix).await;
    println!("  deleted this run's Redis keys ({prefix}*): {}", deleted.as_ref().map(|n| n.to_string()).unwrap_or_else(|e| format!("failed: {e}")));
    result?;
    deleted?;
    Ok(())
}

async fn throughput_redis_rounds(a: &HistoryArgs, url: &str, prefix: &str, conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<()> {
    let options =
        telegraphy_bus::BusOptions { redis_key_prefix: prefix.to_string(), connection_name: "telegraphy-bench-history".into(), ..Default::default() };
    let bus = telegraphy_bus::connect_publisher(url, &options).await?;
    let pid = redis_pid(conn).await;
    let pad = "x".repeat(a.payload);
    let (on_topic, off_topic) = ("bench.hist.t0", "bench.live.t0");
    println!(
        "history throughput · redis · publish_batch windows of {} · topic {on_topic} (history, size {}) vs {off_topic} · {} rounds of {} s + {} s",
        a.window, a.size, a.rounds, a.phase, a.phase
    );
    // Warm-up: the script loaded, the stream at its size.
    redis_phase(&*bus, conn, pid, on_topic, a.window, 1.0, &pad).await?;
    redis_phase(&*bus, conn, pid, off_topic, a.window, 1.0, &pad).await?;
    let mut rounds = Rounds::default();
    for round in 0..a.rounds.max(1) {
        let on_first = round % 2 == 0;
        let (mut on, mut off) = (None, None);
        for on_now in [on_first, !on_first] {
            let topic = if on_now { on_topic } else { off_topic };
            let p = redis_phase(&*bus, conn, pid, topic, a.window, a.phase, &pad).await?;
            if on_now {
                on = Some(p);
            } else {
                off = Some(p);
            }
        }
        let (on, off) = (on.expect("ran"), off.expect("ran"));
        let ratio = on.per_s / off.per_s;
        print_round(round, a.rounds, &on, &off, ratio, "Redis");
        rounds.add(&on, &off);
        emit(
            &a.common,
            json!({
                "scenario": "history-throughput", "bus": "redis", "path": "connect_publisher+publish_batch",
                "window": a.window, "payload": a.payload, "size": a.size, "round": round + 1, "on_first": on_first,
                "on": on.json(), "off": off.json(), "ratio_on_off": ratio,
            }),
        )?;
    }
    summary(&a.common, "redis", &rounds, 0.5)
}

fn print_round(round: usize, rounds: usize, on: &Phase, off: &Phase, ratio: f64, server: &str) {
    let per = |p: &Phase, s: f64| s * 1e6 / p.events.max(1) as f64;
    println!(
        "  round {}/{}: on {}events/s ({:.2} µs {server} CPU, {:.2} µs bench CPU per event) · off {}events/s ({:.2} µs, {:.2} µs) · on/off {:.3}{}",
        round + 1,
        rounds,
        si(on.per_s),
        per(on, on.server_cpu_s),
        per(on, on.bench_cpu_s),
        si(off.per_s),
        per(off, off.server_cpu_s),
        per(off, off.bench_cpu_s),
        ratio,
        if on.errors + off.errors > 0 { format!(" · {} errors", on.errors + off.errors) } else { String::new() }
    );
    let key = match server {
        "Redis" => "redis_process",
        "RabbitMQ" => "rabbitmq_process",
        _ => "gateway_process",
    };
    let f = |p: &Phase, k: &str| p.extra[key][k].as_f64().unwrap_or(0.0);
    let sys = |p: &Phase| f(p, "read_syscalls_per_event") + f(p, "write_syscalls_per_event");
    let cs = |p: &Phase| f(p, "voluntary_switches_per_event") + f(p, "involuntary_switches_per_event");
    println!("    {server} per event: system calls on {:.2} / off {:.2} · context switches on {:.3} / off {:.3}", sys(on), sys(off), cs(on), cs(off));
    for p in [on, off] {
        let other = p.other_pct();
        if other > crate::OTHER_CPU_WARN {
            println!("  WARNING: other processes took {other:.0}% CPU during a phase of this round");
        }
    }
}

/// Medians over every round, and over the quiet rounds (other processes
/// under `OTHER_CPU_WARN` in both phases).
/// What the rounds of a throughput run measured, for the summary.
#[derive(Default)]
struct Rounds {
    ratios: Vec<f64>,
    quiet: Vec<bool>,
    ons: Vec<f64>,
    offs: Vec<f64>,
}

impl Rounds {
    fn add(&mut self, on: &Phase, off: &Phase) {
        self.ratios.push(on.per_s / off.per_s);
        self.quiet.push(on.other_pct() <= crate::OTHER_CPU_WARN && off.other_pct() <= crate::OTHER_CPU_WARN);
        self.ons.push(on.per_s);
        self.offs.push(off.per_s);
    }
}

fn summary(c: &Common, bus: &str, rounds: &Rounds, goal: f64) -> anyhow::Result<()> {
    let Rounds { ratios, quiet, ons, offs } = rounds;
    let r = median(ratios.to_vec());
    let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    println!(
        "median of {} rounds: on {}events/s, off {}events/s, on/off {:.3} (range {:.3}–{:.3}); goal ≥ {:.2}: {}",
        ratios.len(),
        si(median(ons.to_vec())),
        si(median(offs.to_vec())),
        r,
        lo,
        hi,
        goal,
        if r >= goal { "met" } else { "missed" }
    );
    let pick = |v: &[f64]| v.iter().zip(quiet).filter(|(_, q)| **q).map(|(x, _)| *x).collect::<Vec<f64>>();
    let (qr, qon, qoff) = (pick(ratios), pick(ons), pick(offs));
    if !qr.is_empty() {
        println!(
            "median of the {} quiet rounds (other processes ≤ {:.0}% in both phases): on {}events/s, off {}events/s, on/off {:.3}",
            qr.len(),
            crate::OTHER_CPU_WARN,
            si(median(qon.clone())),
            si(median(qoff.clone())),
            median(qr.clone())
        );
    } else {
        println!("no quiet round (other processes took more than {:.0}% in a phase of every round)", crate::OTHER_CPU_WARN);
    }
    emit(
        c,
        json!({
            "scenario": "history-throughput", "bus": bus, "summary": true, "rounds": ratios.len(),
            "median_on_per_s": median(ons.to_vec()), "median_off_per_s": median(offs.to_vec()),
            "median_ratio": r, "ratio_min": lo, "ratio_max": hi, "ratios": ratios, "quiet": quiet, "goal": goal,
            "quiet_rounds": qr.len(), "quiet_median_ratio": (!qr.is_empty()).then(|| median(qr.clone())),
            "quiet_median_on_per_s": (!qon.is_empty()).then(|| median(qon)), "quiet_median_off_per_s": (!qoff.is_empty()).then(|| median(qoff)),
        }),
    )
}

// ---------------------------------------------------------------- RabbitMQ

/// The pid of the RabbitMQ server at `url`: the Erlang VM (`beam.smp`
/// with `rabbit` in its command line) that owns the socket listening on
/// the URL's port, or the only such VM when sockets cannot be read (other
/// users' file descriptors). Private brokers of tests may run beside it.
fn rabbitmq_pid(url: &str) -> Option<u32> {
    let port = url.parse::<lapin::uri::AMQPUri>().ok()?.authority.port;
    let vms: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "beam.smp"))
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(6).any(|w| w == b"rabbit")))
        .collect();
    // Inodes of the sockets listening (state 0A) on `port`.
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
                    let inode = f.get(9)?;
                    (local_port == port && *f.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let owns = |pid: &u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| listening.iter().any(|s| l.as_os_str() == s.as_str())))
        })
    };
    match vms.iter().copied().find(owns) {
        Some(pid) => Some(pid),
        None => (vms.len() == 1).then(|| vms[0]),
    }
}

/// The queues a gateway node declares beside `exchange` when topics keep
/// history (`stream_name` and `epoch_stream_name` in bus/src/amqp/history.rs).
fn history_streams(exchange: &str) -> [String; 2] {
    [format!("{exchange}.history"), format!("{exchange}.history-epoch")]
}

/// Deletes this run's RabbitMQ objects: the two history streams beside
/// `exchange`, then the exchange. These three names only, each on a channel
/// of its own (an error closes its channel); deleting one that is not there
/// succeeds. Call it once nothing of the run is connected any more: a node
/// would declare the streams again.
async fn delete_amqp(url: &str, exchange: &str) -> anyhow::Result<()> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let props = lapin::ConnectionProperties::default().with_connection_name("telegraphy-bench-history-cleanup".into());
    let conn = tokio::time::timeout(Duration::from_secs(10), lapin::Connection::connect(url, props))
        .await
        .context("no answer from RabbitMQ within 10 s")?
        .context("connecting to RabbitMQ")?;
    let mut failed = Vec::new();
    for queue in history_streams(exchange) {
        let channel = conn.create_channel().await?;
        match channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await {
            Ok(_) => drop(channel.close(200, "".into()).await),
            Err(e) => failed.push(format!("queue {queue}: {e}")),
        }
    }
    // Nodes declare the control exchange beside it.
    for exchange in [exchange.to_string(), format!("{exchange}.control")] {
        let channel = conn.create_channel().await?;
        match channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await {
            Ok(()) => drop(channel.close(200, "".into()).await),
            Err(e) => failed.push(format!("exchange {exchange}: {e}")),
        }
    }
    let _ = conn.close(200, "".into()).await;
    if !failed.is_empty() {
        bail!("could not delete {} (delete them by hand)", failed.join(", "));
    }
    Ok(())
}

/// Deletes the run's exchange and history streams when `bus` is RabbitMQ
/// (`c.namespace` is the exchange), and says so.
async fn cleanup_amqp(bus: &str, c: &Common) -> anyhow::Result<()> {
    let url = crate::bus_url(bus);
    if !url.starts_with("amqp") {
        return Ok(());
    }
    let exchange = &c.namespace;
    let deleted = delete_amqp(&url, exchange).await;
    let [stream, epochs] = history_streams(exchange);
    println!(
        "  deleted this run's RabbitMQ exchange {exchange} and streams {stream}, {epochs}: {}",
        deleted.as_ref().map(|()| "done".to_string()).unwrap_or_else(|e| format!("failed: {e:#}"))
    );
    deleted
}

/// Runs `f` unless SIGINT or SIGTERM comes first; then `f` is dropped,
/// which stops the gateway and the publisher it started, and the caller
/// still cleans up what the run left on the shared broker.
async fn until_interrupted<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    tokio::select! {
        r = f => r,
        _ = int.recv() => bail!("interrupted (SIGINT)"),
        _ = term.recv() => bail!("interrupted (SIGTERM)"),
    }
}

/// The gateway node of a RabbitMQ run: what it read so far.
struct Node {
    pid: u32,
    admin_url: String,
}

impl Node {
    /// Events the node took off the bus so far: on this run, the history
    /// topic's events it read from the stream (nobody subscribes, so its own
    /// queue has no binding).
    async fn received(&self) -> anyhow::Result<u64> {
        let m = scrape(&self.admin_url).await?;
        Ok(m.get(telegraphy_bus::metrics::name::RECEIVED).copied().unwrap_or(0.0) as u64)
    }

    /// Waits until the node read `target` events (at most `within`):
    /// (what it read, how long that took).
    async fn read_up_to(&self, target: u64, within: Duration) -> anyhow::Result<(u64, Duration)> {
        let t0 = Instant::now();
        loop {
            let n = self.received().await?;
            if n >= target || t0.elapsed() > within {
                return Ok((n, t0.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One phase on RabbitMQ: `publish_batch` windows to `topic` for `secs`
/// (the timed part: events/s are the events RabbitMQ confirmed), then,
/// untimed, until the node read every event the phase routed to the
/// history stream (none for a live-only topic), so that no phase pays for
/// the node's reading of the one before.
#[allow(clippy::too_many_arguments)]
async fn amqp_phase(
    bus: &dyn telegraphy_bus::Bus,
    node: &Node,
    rabbit: Option<u32>,
    topic: &str,
    history: bool,
    window: usize,
    secs: f64,
    pad: &str,
) -> anyhow::Result<Phase> {
    let ticks = procstat::clock_ticks();
    let cpu = |pid: u32| procstat::read(pid, ticks).map_or(0.0, |x| x.0);
    let read0 = node.received().await?;
    let (srv_cpu0, node_cpu0) = (rabbit.map_or(0.0, cpu), cpu(node.pid));
    let (srv0, node0, me0) = (rabbit.map(counters).unwrap_or_default(), counters(node.pid), counters(std::process::id()));
    let m0 = CpuMark::now();
    let t0 = Instant::now();
    let (events, errors) = publish_batches(bus, topic, window, t0 + Duration::from_secs_f64(secs), pad).await;
    let elapsed_s = t0.elapsed().as_secs_f64();
    let m1 = CpuMark::now();
    let (srv_cpu1, node_cpu1) = (rabbit.map_or(0.0, cpu), cpu(node.pid));
    let (srv1, node1, me1) = (rabbit.map(counters).unwrap_or_default(), counters(node.pid), counters(std::process::id()));
    let (machine_pct, bench_pct) = procstat::machine_pct(&m0, &m1);
    let expected = if history { events } else { 0 };
    let (read, caught_up) = node.read_up_to(read0 + expected, Duration::from_secs(30)).await?;
    let read = read - read0;
    if read != expected {
        println!("  WARNING: the node read {read} events from the history stream, {expected} expected (phase on {topic})");
    }
    let node_cpu_total = cpu(node.pid) - node_cpu0;
    Ok(Phase {
        events,
        errors,
        elapsed_s,
        per_s: events as f64 / elapsed_s,
        server_cpu_s: srv_cpu1 - srv_cpu0,
        node_cpu_s: Some(node_cpu1 - node_cpu0),
        bench_cpu_s: bench_pct * elapsed_s / 100.0,
        machine_pct,
        extra: json!({
            "rabbitmq_pid": rabbit,
            "rabbitmq_process": counters_json(srv0, srv1, events),
            "gateway_process": counters_json(node0, node1, events),
            "bench_process": counters_json(me0, me1, events),
            "node_read_events": read,
            "node_caught_up_ms_after_phase": caught_up.as_secs_f64() * 1000.0,
            "node_cpu_us_per_event_until_caught_up": if events > 0 { node_cpu_total * 1e6 / events as f64 } else { 0.0 },
        }),
    })
}

async fn throughput_amqp(a: &HistoryArgs) -> anyhow::Result<()> {
    let url = crate::bus_url(&a.bus);
    let c = gateway_common(a, &unique_namespace(&a.common.namespace));
    let result = until_interrupted(throughput_amqp_rounds(a, &url, &c)).await;
    // The node and the publisher are gone by now.
    let deleted = cleanup_amqp(&a.bus, &c).await;
    result?;
    deleted
}

async fn throughput_amqp_rounds(a: &HistoryArgs, url: &str, c: &Common) -> anyhow::Result<()> {
    let exchange = c.namespace.as_str();
    // One node on the run's exchange with `bench.hist.*` keeping history:
    // ready once it declared `{exchange}.history`, bound `#.bench.hist.#`
    // to it and started reading it.
    let r = routers(c, Kind::Gateway { nodes: 1, bus: a.bus.clone(), production_limits: false }, false).await?;
    let node = Node { pid: r.pids[0], admin_url: r._procs[0].admin_url.clone() };
    let options =
        telegraphy_bus::BusOptions { amqp_exchange: exchange.to_string(), connection_name: "telegraphy-bench-history".into(), ..Default::default() };
    let bus = telegraphy_bus::connect_publisher(url, &options).await?;
    let rabbit = rabbitmq_pid(url);
    let pad = "x".repeat(a.payload);
    let (on_topic, off_topic) = ("bench.hist.t0", "bench.live.t0");
    println!(
        "history throughput · amqp · exchange {exchange} · publish_batch windows of {} · topic {on_topic} (to the stream {exchange}.history, read by one gateway node) vs {off_topic} (routed nowhere) · {} rounds of {} s + {} s",
        a.window, a.rounds, a.phase, a.phase
    );
    match rabbit {
        Some(pid) => println!("  RabbitMQ: beam.smp pid {pid} · gateway node pid {}", node.pid),
        None => println!("  RabbitMQ's process not found in /proc: its CPU counts as other processes' · gateway node pid {}", node.pid),
    }
    // Warm-up: the stream's first segment, the node's reading, the channels.
    amqp_phase(&*bus, &node, rabbit, on_topic, true, a.window, 1.0, &pad).await?;
    amqp_phase(&*bus, &node, rabbit, off_topic, false, a.window, 1.0, &pad).await?;
    let mut rounds = Rounds::default();
    for round in 0..a.rounds.max(1) {
        let on_first = round % 2 == 0;
        let (mut on, mut off) = (None, None);
        for on_now in [on_first, !on_first] {
            let topic = if on_now { on_topic } else { off_topic };
            let p = amqp_phase(&*bus, &node, rabbit, topic, on_now, a.window, a.phase, &pad).await?;
            if on_now {
                on = Some(p);
            } else {
                off = Some(p);
            }
        }
        let (on, off) = (on.expect("ran"), off.expect("ran"));
        let ratio = on.per_s / off.per_s;
        print_round(round, a.rounds, &on, &off, ratio, "RabbitMQ");
        let per = |p: &Phase, s: f64| s * 1e6 / p.events.max(1) as f64;
        let detail = |p: &Phase, k: &str| p.extra[k].as_f64().unwrap_or(0.0);
        println!(
            "    gateway node: {:.2} µs CPU per event during the phase on, {:.2} µs until it read the last one ({:.0} ms after the phase) · off {:.2} µs",
            per(&on, on.node_cpu_s.unwrap_or(0.0)),
            detail(&on, "node_cpu_us_per_event_until_caught_up"),
            detail(&on, "node_caught_up_ms_after_phase"),
            per(&off, off.node_cpu_s.unwrap_or(0.0)),
        );
        rounds.add(&on, &off);
        emit(
            c,
            json!({
                "scenario": "history-throughput", "bus": "amqp", "path": "connect_publisher+publish_batch",
                "window": a.window, "payload": a.payload, "size": a.size, "round": round + 1, "on_first": on_first,
                "on": on.json(), "off": off.json(), "ratio_on_off": ratio, "router": {"pids": r.pids},
            }),
        )?;
    }
    let out = summary(c, "amqp", &rounds, 0.5);
    drop(bus);
    drop(r);
    out
}

// ---------------------------------------------------------------- WAMP

fn opcode(ser: Serialization) -> u8 {
    if ser.is_binary() {
        op::BINARY
    } else {
        op::TEXT
    }
}

/// Appends a PUBLISH with `acknowledge: true` to `out`.
fn publish_acked_frame(ser: Serialization, out: &mut Vec<u8>, request: u64, topic: &str, seq: u64, pad: &str) -> anyhow::Result<()> {
    let options = Dict::from_iter([("acknowledge".to_string(), Value::Bool(true))]);
    let msg = Message::Publish { request, options, topic: topic.into(), args: wamp::event_args(now_us(), seq, pad), kwargs: Dict::new() };
    let bytes = ser.encode(&msg).map_err(|e| anyhow::anyhow!("encode: {}", e.0))?;
    ws::frame_into(out, opcode(ser), &bytes);
    Ok(())
}

#[derive(Default, Clone, Copy)]
struct Acked {
    acked: u64,
    errors: u64,
    last: Option<Instant>,
}

/// Publishes to `topic` keeping `in_flight` PUBLISHes unacknowledged,
/// until `until` or `max` events were sent; waits for every answer.
async fn publish_acked(s: &mut Session, topic: &str, in_flight: usize, until: Instant, max: u64, first_seq: u64, pad: &str) -> anyhow::Result<Acked> {
    let ser = s.ser;
    let mut out = Vec::with_capacity(in_flight * (pad.len() + 96));
    let (mut sent, mut outstanding) = (0u64, 0usize);
    let mut r = Acked::default();
    let mut request = 1u64 << 40;
    loop {
        out.clear();
        while outstanding < in_flight && sent < max && Instant::now() < until {
            request += 1;
            publish_acked_frame(ser, &mut out, request, topic, first_seq + sent, pad)?;
            sent += 1;
            outstanding += 1;
        }
        if !out.is_empty() {
            s.ws.send_raw(&out).await?;
        }
        if outstanding == 0 {
            return Ok(r);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.ws.read_more()).await.context("no PUBLISHED within 10 s")??;
        if n == 0 {
            bail!("the gateway closed the publisher's connection");
        }
        let (mut acked, mut errors) = (0u64, 0u64);
        s.ws.parse(|_, payload| match wamp::decode_incoming(ser, payload) {
            Ok(Incoming::Other(telegraphy_wamp::code::PUBLISHED)) => acked += 1,
            Ok(Incoming::Other(telegraphy_wamp::code::ERROR)) => errors += 1,
            _ => {}
        })?;
        s.ws.flush_control().await?;
        if acked > 0 {
            r.last = Some(Instant::now());
        }
        r.acked += acked;
        r.errors += errors;
        outstanding = outstanding.saturating_sub((acked + errors) as usize);
    }
}

/// Publishes one event with `acknowledge` and returns its publication id.
async fn publish_one(s: &mut Session, topic: &str, seq: u64, pad: &str) -> anyhow::Result<u64> {
    let mut out = Vec::new();
    publish_acked_frame(s.ser, &mut out, 1, topic, seq, pad)?;
    s.ws.send_raw(&out).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.recv()).await.context("no PUBLISHED within 10 s")?? {
            Message::Published { publication, .. } => return Ok(publication),
            Message::Error { error, .. } => bail!("PUBLISH refused: {error}"),
            _ => {}
        }
    }
}

async fn open_sessions(spec: &ClientSpec, n: usize, from: usize) -> anyhow::Result<Vec<Session>> {
    let mut out = Vec::with_capacity(n);
    for i in from..from + n {
        let (target, source) = spec.route(i);
        out.push(wamp::open(target, source, spec.ser, &spec.realm, &spec.auth(i, true)?).await?);
    }
    Ok(out)
}

async fn gateway_phase(
    publishers: Vec<Session>,
    pid: u32,
    topic: &str,
    in_flight: usize,
    secs: f64,
    pad: &Arc<str>,
    first_seq: u64,
) -> anyhow::Result<(Vec<Session>, Phase)> {
    let ticks = procstat::clock_ticks();
    let cpu0 = procstat::read(pid, ticks).map_or(0.0, |x| x.0);
    let (gw0, me0) = (counters(pid), counters(std::process::id()));
    let m0 = CpuMark::now();
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for (k, mut s) in publishers.into_iter().enumerate() {
        let (topic, pad) = (topic.to_string(), pad.clone());
        tasks.spawn(async move {
            let r = publish_acked(&mut s, &topic, in_flight, until, u64::MAX, first_seq + ((k as u64) << 32), &pad).await;
            (k, s, r)
        });
    }
    let mut back = Vec::new();
    let mut total = Acked::default();
    while let Some(done) = tasks.join_next().await {
        let (k, s, r) = done?;
        let r = r?;
        total.acked += r.acked;
        total.errors += r.errors;
        total.last = total.last.max(r.last);
        back.push((k, s));
    }
    back.sort_by_key(|(k, _)| *k);
    let m1 = CpuMark::now();
    let cpu1 = procstat::read(pid, ticks).map_or(0.0, |x| x.0);
    let (gw1, me1) = (counters(pid), counters(std::process::id()));
    let (machine_pct, bench_pct) = procstat::machine_pct(&m0, &m1);
    let wall = t0.elapsed().as_secs_f64();
    let elapsed_s = total.last.map_or(wall, |l| l.duration_since(t0).as_secs_f64());
    Ok((
        back.into_iter().map(|(_, s)| s).collect(),
        Phase {
            events: total.acked,
            errors: total.errors,
            elapsed_s,
            per_s: total.acked as f64 / elapsed_s,
            server_cpu_s: cpu1 - cpu0,
            node_cpu_s: None,
            bench_cpu_s: bench_pct * wall / 100.0,
            machine_pct,
            extra: json!({
                "gateway_process": counters_json(gw0, gw1, total.acked),
                "bench_process": counters_json(me0, me1, total.acked),
            }),
        },
    ))
}

async fn throughput_memory(a: &HistoryArgs) -> anyhow::Result<()> {
    let c = gateway_common(a, &a.common.namespace);
    let r = routers(&c, Kind::Gateway { nodes: 1, bus: a.bus.clone(), production_limits: false }, false).await?;
    let spec = client_spec(&c, &r);
    let pid = r.pids[0];
    let (on_topic, off_topic) = ("bench.hist.t0", "bench.live.t0");
    let shared = load::Shared::new();
    let mut subscribers = tokio::task::JoinSet::new();
    for topic in [on_topic, off_topic] {
        for mut s in open_sessions(&spec, a.subscribers, 1000).await? {
            s.subscribe(topic).await?;
            subscribers.spawn(load::idle(s, shared.clone()));
        }
    }
    let mut publishers = open_sessions(&spec, a.publishers.max(1), 0).await?;
    let pad: Arc<str> = "x".repeat(a.payload).into();
    println!(
        "history throughput · {} gateway · {} WAMP publishers × {} PUBLISH (acknowledge) in flight · {} subscribers per topic · topic {on_topic} (history, size {}) vs {off_topic} · {} rounds of {} s + {} s",
        a.bus,
        a.publishers,
        a.in_flight,
        a.subscribers,
        a.size,
        a.rounds,
        a.phase,
        a.phase
    );
    let mut seq = 1u64;
    for topic in [on_topic, off_topic] {
        let (back, _) = gateway_phase(publishers, pid, topic, a.in_flight, 1.0, &pad, seq).await?;
        publishers = back;
        seq += 1 << 48;
    }
    let mut rounds = Rounds::default();
    for round in 0..a.rounds.max(1) {
        let on_first = round % 2 == 0;
        let (mut on, mut off) = (None, None);
        for on_now in [on_first, !on_first] {
            let topic = if on_now { on_topic } else { off_topic };
            let (back, p) = gateway_phase(publishers, pid, topic, a.in_flight, a.phase, &pad, seq).await?;
            publishers = back;
            seq += 1 << 48;
            if on_now {
                on = Some(p);
            } else {
                off = Some(p);
            }
        }
        let (on, off) = (on.expect("ran"), off.expect("ran"));
        let ratio = on.per_s / off.per_s;
        print_round(round, a.rounds, &on, &off, ratio, "gateway");
        rounds.add(&on, &off);
        emit(
            &c,
            json!({
                "scenario": "history-throughput", "bus": a.bus, "path": "wamp-acknowledge",
                "publishers": a.publishers, "in_flight": a.in_flight, "subscribers_per_topic": a.subscribers,
                "payload": a.payload, "size": a.size, "round": round + 1, "on_first": on_first,
                "on": on.json(), "off": off.json(), "ratio_on_off": ratio, "router": {"pids": r.pids},
            }),
        )?;
    }
    if shared.disconnects.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        println!("  WARNING: subscriber sessions dropped during the run");
    }
    subscribers.abort_all();
    let out = summary(&c, &a.bus, &rounds, 0.8);
    drop(publishers);
    drop(r);
    out
}

async fn cleanup_redis(bus: &str, c: &Common) {
    let url = crate::bus_url(bus);
    if !url.starts_with("redis") {
        return;
    }
    let prefix = format!("{}:", c.namespace);
    let deleted = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        delete_prefix(&mut conn, &prefix).await
    }
    .await;
    println!("  deleted this run's Redis keys ({prefix}*): {}", deleted.map(|n| n.to_string()).unwrap_or_else(|e| format!("failed: {e}")));
}

// ---------------------------------------------------------------- resume

struct ResumeOne {
    to_subscribed_us: u64,
    to_marker_us: u64,
    events: u64,
    in_order: bool,
    recovered: Option<bool>,
    marker_publication: u64,
    bytes: u64,
}

/// One resume on a fresh session: SUBSCRIBE with `_after_publication`,
/// then everything up to the `_recovered` marker.
async fn resume_once(s: &mut Session, topic: &str, after: u64, first_seq: u64) -> anyhow::Result<ResumeOne> {
    let ser = s.ser;
    let options = Dict::from_iter([("_after_publication".to_string(), Value::UInt(after))]);
    let bytes = ser.encode(&Message::Subscribe { request: 7, options, topic: topic.into() }).map_err(|e| anyhow::anyhow!("encode: {}", e.0))?;
    let mut out = Vec::new();
    ws::frame_into(&mut out, opcode(ser), &bytes);
    let mut r = ResumeOne { to_subscribed_us: 0, to_marker_us: 0, events: 0, in_order: true, recovered: None, marker_publication: 0, bytes: 0 };
    let mut next_seq = first_seq;
    let mut error = None;
    let t0 = Instant::now();
    s.ws.send_raw(&out).await?;
    loop {
        s.ws.parse(|_, payload| {
            if r.recovered.is_some() {
                return;
            }
            r.bytes += payload.len() as u64;
            match wamp::decode_incoming(ser, payload) {
                Ok(Incoming::Other(telegraphy_wamp::code::SUBSCRIBED)) => r.to_subscribed_us = t0.elapsed().as_micros() as u64,
                Ok(Incoming::Event(BenchEvent { seq, .. })) => {
                    r.events += 1;
                    r.in_order &= seq == next_seq;
                    next_seq = seq + 1;
                }
                Ok(Incoming::OtherEvent) => {
                    if let Ok(Message::Event { publication, details, .. }) = ser.decode(payload) {
                        if let Some(v) = details.get("_recovered") {
                            r.to_marker_us = t0.elapsed().as_micros() as u64;
                            r.recovered = Some(v.as_bool().unwrap_or(false));
                            r.marker_publication = publication;
                        }
                    }
                }
                Ok(Incoming::Other(code)) => error = Some(format!("unexpected message type {code}")),
                Err(e) => error = Some(format!("{e:#}")),
            }
        })?;
        s.ws.flush_control().await?;
        if let Some(e) = error.take() {
            bail!("during a resume: {e}");
        }
        if r.recovered.is_some() {
            return Ok(r);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.ws.read_more()).await.context("no `_recovered` marker within 10 s")??;
        if n == 0 {
            bail!("the gateway closed the connection during a resume");
        }
    }
}

async fn resume(a: &HistoryArgs) -> anyhow::Result<()> {
    let url = crate::bus_url(&a.bus);
    let (redis, amqp) = (url.starts_with("redis"), url.starts_with("amqp"));
    let ns = if redis || amqp { unique_namespace(&a.common.namespace) } else { a.common.namespace.clone() };
    let c = gateway_common(a, &ns);
    let result = if amqp { until_interrupted(resume_run(a, &c)).await } else { resume_run(a, &c).await };
    cleanup_redis(&a.bus, &c).await;
    // The gateway is gone by now (it would declare the streams again).
    let deleted = cleanup_amqp(&a.bus, &c).await;
    result?;
    deleted
}

/// Reads `n` benchmark EVENTs (seq 0, 1, …) on a subscriber: the first and
/// the last one's publication id.
async fn event_ids(s: &mut Session, n: u64) -> anyhow::Result<(u64, u64)> {
    let (mut first, mut last, mut seen) = (0, 0, 0u64);
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(10), s.recv()).await.context("the subscriber got no EVENT within 10 s")?? {
            Message::Event { publication, args, .. } => {
                let seq = args.get(1).and_then(Value::as_u64);
                if seq != Some(seen) {
                    bail!("the subscriber got event seq {seq:?}, expected {seen}");
                }
                if seen == 0 {
                    first = publication;
                }
                last = publication;
                seen += 1;
            }
            Message::Error { error, .. } => bail!("the subscriber got an ERROR: {error}"),
            _ => {}
        }
    }
    Ok((first, last))
}

async fn resume_run(a: &HistoryArgs, c: &Common) -> anyhow::Result<()> {
    if a.events > a.max_replay || a.events > a.size {
        bail!("--events {} must fit in --size {} and --max-replay {} to be recoverable", a.events, a.size, a.max_replay);
    }
    let r = routers(c, Kind::Gateway { nodes: 1, bus: a.bus.clone(), production_limits: false }, false).await?;
    let spec = client_spec(c, &r);
    let pid = r.pids[0];
    let topic = "bench.hist.resume";
    let pad = "x".repeat(a.payload);
    let mut publisher = open_sessions(&spec, 1, 0).await?.pop().context("a publisher")?;
    // On RabbitMQ PUBLISHED's id is not the event's position (RabbitMQ
    // assigns that after it confirmed): a subscriber learns the EVENTs' ids,
    // and it leaves before the resumes.
    let mut watcher = None;
    if crate::bus_url(&a.bus).starts_with("amqp") {
        let mut s = open_sessions(&spec, 1, 1).await?.pop().context("a subscriber")?;
        s.subscribe(topic).await?;
        watcher = Some(s);
    }
    // The resume point: the event just before the N missed ones.
    let published = publish_one(&mut publisher, topic, 0, &pad).await?;
    let sent = publish_acked(&mut publisher, topic, a.in_flight, Instant::now() + Duration::from_secs(120), a.events as u64, 1, &pad).await?;
    if sent.acked != a.events as u64 || sent.errors > 0 {
        bail!("published {} of {} events ({} errors)", sent.acked, a.events, sent.errors);
    }
    let (after, expected_marker) = match watcher.take() {
        Some(mut s) => {
            let (first, last) = event_ids(&mut s, a.events as u64 + 1).await?;
            (first, Some(last))
        }
        None => (published, Position::from_publication(published).map(|p| Position { offset: p.offset + a.events as u64, ..p }.publication())),
    };
    println!(
        "history resume · {} gateway · {} events of {} B padding missed after publication {after} · {} resumes, each on a fresh session · history.size {} · max_replay {}",
        a.bus, a.events, a.payload, a.resumes, a.size, a.max_replay
    );
    // A first resume warms the gateway's paths up (not counted).
    let mut warm = open_sessions(&spec, 1, 2).await?.pop().context("a session")?;
    resume_once(&mut warm, topic, after, 1).await?;
    drop(warm);
    let (mut to_marker, mut to_sub) = (load::histogram(), load::histogram());
    let (mut bad, mut bytes) = (0u64, 0u64);
    let ticks = procstat::clock_ticks();
    let cpu0 = procstat::read(pid, ticks).map_or(0.0, |x| x.0);
    let m0 = CpuMark::now();
    let t_loop = Instant::now();
    for i in 0..a.resumes {
        let mut s = open_sessions(&spec, 1, 10 + i).await?.pop().context("a session")?;
        let one = resume_once(&mut s, topic, after, 1).await?;
        let ok = one.recovered == Some(true) && one.events == a.events as u64 && one.in_order && Some(one.marker_publication) == expected_marker;
        if !ok {
            bad += 1;
            if bad <= 3 {
                println!(
                    "  resume {i}: recovered {:?}, {} events (in order: {}), marker publication {} (expected {:?})",
                    one.recovered, one.events, one.in_order, one.marker_publication, expected_marker
                );
            }
        }
        to_marker.saturating_record(one.to_marker_us.max(1));
        to_sub.saturating_record(one.to_subscribed_us.max(1));
        bytes += one.bytes;
        drop(s);
        // Let the gateway close the session before the next one.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m1 = CpuMark::now();
    let cpu1 = procstat::read(pid, ticks).map_or(0.0, |x| x.0);
    let (machine_pct, bench_pct) = procstat::machine_pct(&m0, &m1);
    let wall = t_loop.elapsed().as_secs_f64();
    let (lm, ls) = (Latency::of(&to_marker), Latency::of(&to_sub));
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "  SUBSCRIBE → `_recovered` marker: p50 {:.2} · p90 {:.2} · p99 {:.2} · max {:.2} ms ({} resumes; goal p99 < 50 ms: {})",
        ms(lm.p50),
        ms(lm.p90),
        ms(lm.p99),
        ms(lm.max),
        lm.count,
        if lm.p99 < 50_000 { "met" } else { "missed" }
    );
    println!("  SUBSCRIBE → SUBSCRIBED: p50 {:.2} · p99 {:.2} ms", ms(ls.p50), ms(ls.p99));
    println!(
        "  every resume recovered {} events in order: {} ({} not) · {:.0} KiB per resume · gateway CPU {:.2} ms per resume",
        a.events,
        if bad == 0 { "yes" } else { "NO" },
        bad,
        bytes as f64 / a.resumes.max(1) as f64 / 1024.0,
        (cpu1 - cpu0) * 1000.0 / a.resumes.max(1) as f64
    );
    let metrics = scrape(&r._procs[0].admin_url).await.unwrap_or_default();
    let machine_cpu = crate::machine_cpu_line(machine_pct, bench_pct, 100.0 * (cpu1 - cpu0) / wall);
    emit(
        c,
        json!({
            "scenario": "history-resume", "bus": a.bus, "events": a.events, "payload": a.payload, "size": a.size,
            "max_replay": a.max_replay, "resumes": a.resumes, "after_publication": after,
            "result": {
                "to_marker_us": lm, "to_subscribed_us": ls, "not_recovered_or_wrong": bad,
                "bytes_per_resume": bytes as f64 / a.resumes.max(1) as f64,
                "gateway_cpu_ms_per_resume": (cpu1 - cpu0) * 1000.0 / a.resumes.max(1) as f64,
                "gateway_resumes_total": metrics.get("telegraphy_history_resumes_total{recovered=\"true\"}"),
            },
            "machine_cpu": machine_cpu, "router": {"pids": r.pids},
        }),
    )?;
    drop(publisher);
    drop(r);
    if bad > 0 {
        bail!("{bad} resumes did not recover all {} events in order", a.events);
    }
    Ok(())
}

/// The gateway's `/metrics`, as name{labels} → value.
async fn scrape(admin_url: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = reqwest::get(format!("{admin_url}/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

// ---------------------------------------------------------------- memory

async fn memory(a: &HistoryArgs) -> anyhow::Result<()> {
    let c = gateway_common(a, &a.common.namespace);
    let events = (a.topics * a.per_topic) as u64;
    if a.per_topic > a.size {
        bail!("--per-topic {} is more than --size {}: the store would drop events", a.per_topic, a.size);
    }
    let pad = "x".repeat(a.payload);
    println!(
        "history memory · memory:// gateway · {} topics × {} events of {} B padding · fresh gateway per measurement, history (bench.hist.K) and control (bench.live.K) alternating · {} rounds",
        a.topics, a.per_topic, a.payload, a.rounds
    );
    let mut per_event = Vec::new();
    for round in 0..a.rounds.max(1) {
        let mut deltas = BTreeMap::new();
        let hist_first = round % 2 == 0;
        for hist in [hist_first, !hist_first] {
            let r = routers(&c, Kind::Gateway { nodes: 1, bus: "memory".into(), production_limits: false }, false).await?;
            let spec = client_spec(&c, &r);
            let sampler = Sampler::start(r.pids.clone(), Duration::from_millis(200));
            let mut publisher = open_sessions(&spec, 1, 0).await?.pop().context("a publisher")?;
            // Warm up the publish path (buffers, allocator arenas) on a live-only topic.
            publish_acked(&mut publisher, "bench.warm", a.in_flight, Instant::now() + Duration::from_secs(60), 2000, 0, &pad).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss0 = settled_rss(&sampler).await;
            let base = scrape(&r._procs[0].admin_url).await?;
            let t0 = Instant::now();
            let prefix = if hist { "bench.hist" } else { "bench.live" };
            // Topic by topic, `per_topic` events each.
            let mut acked = 0;
            for k in 0..a.topics {
                let topic = format!("{prefix}.{k:04}");
                let sent = publish_acked(&mut publisher, &topic, a.in_flight, Instant::now() + Duration::from_secs(120), a.per_topic as u64, 1, &pad)
                    .await?;
                acked += sent.acked;
            }
            let publish_s = t0.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss1 = settled_rss(&sampler).await;
            let m = scrape(&r._procs[0].admin_url).await?;
            let held_events =
                m.get("telegraphy_history_held_events").copied().unwrap_or(0.0) - base.get("telegraphy_history_held_events").copied().unwrap_or(0.0);
            let held_bytes =
                m.get("telegraphy_history_held_bytes").copied().unwrap_or(0.0) - base.get("telegraphy_history_held_bytes").copied().unwrap_or(0.0);
            let delta_b = (rss1 as f64 - rss0 as f64) * 1024.0;
            println!(
                "  round {}/{} · {}: {acked} events in {publish_s:.1} s · RSS {:.1} → {:.1} MiB (+{:.1} MiB, {:.0} B per event) · held {} events, {} B of envelopes ({:.0} B each)",
                round + 1,
                a.rounds,
                if hist { "history" } else { "control" },
                rss0 as f64 / 1024.0,
                rss1 as f64 / 1024.0,
                delta_b / 1048576.0,
                delta_b / events as f64,
                held_events,
                held_bytes,
                if held_events > 0.0 { held_bytes / held_events } else { 0.0 }
            );
            if acked != events {
                bail!("published {acked} of {events} events");
            }
            deltas.insert(hist, delta_b);
            emit(
                &c,
                json!({
                    "scenario": "history-memory", "bus": "memory", "kind": if hist { "history" } else { "control" },
                    "round": round + 1, "topics": a.topics, "per_topic": a.per_topic, "payload": a.payload, "size": a.size,
                    "result": {
                        "events": acked, "publish_s": publish_s, "rss_before_kib": rss0, "rss_after_kib": rss1,
                        "rss_delta_bytes_per_event": delta_b / events as f64,
                        "held_events": held_events, "held_bytes": held_bytes,
                        "envelope_bytes_per_event": if held_events > 0.0 { held_bytes / held_events } else { 0.0 },
                    },
                    "sizes": {
                        "envelope_struct": std::mem::size_of::<Envelope>(),
                        "kept_entry_struct": std::mem::size_of::<(Instant, u64, Envelope)>(),
                        "value_struct": std::mem::size_of::<Value>(),
                    },
                    "router": {"pids": r.pids},
                }),
            )?;
            drop(publisher);
            drop(r);
        }
        let diff = (deltas[&true] - deltas[&false]) / events as f64;
        println!("  round {}/{}: history − control = {diff:.0} B of RSS per kept event", round + 1, a.rounds);
        per_event.push(diff);
    }
    println!(
        "median of {} rounds: {:.0} B of gateway RSS per kept event (history − control); Envelope is {} B, a kept entry {} B before its heap parts",
        per_event.len(),
        median(per_event.clone()),
        std::mem::size_of::<Envelope>(),
        std::mem::size_of::<(Instant, u64, Envelope)>()
    );
    emit(
        &c,
        json!({"scenario": "history-memory", "bus": "memory", "summary": true, "rss_bytes_per_kept_event": per_event, "median": median(per_event)}),
    )
}

// ---------------------------------------------------------------- store

/// Nanoseconds per item of `f` over `items`, the best of `reps` passes
/// (fresh inputs each pass, made outside the timing).
fn time_per<T>(reps: usize, make: impl Fn() -> Vec<T>, mut f: impl FnMut(Vec<T>)) -> Vec<f64> {
    (0..reps)
        .map(|_| {
            let items = make();
            let n = items.len().max(1) as f64;
            let t = Instant::now();
            f(items);
            t.elapsed().as_nanos() as f64 / n
        })
        .collect()
}

async fn store(a: &HistoryArgs) -> anyhow::Result<()> {
    use telegraphy_bus::pattern::PatternSet;
    use telegraphy_bus::{HistoryConfig, MemoryStore};
    let config = HistoryConfig {
        topics: PatternSet::parse(&[HISTORY_PATTERN]).map_err(|e| anyhow::anyhow!("{e}"))?,
        size: a.size,
        ttl: Duration::from_secs(3600),
        max_topics: 100_000,
    };
    let n = 200_000usize;
    let reps = a.rounds.max(1);
    let pad = "x".repeat(a.payload);
    let events = |topic: &str| -> Vec<Envelope> { (0..n as u64).map(|seq| bench_envelope(topic, seq, &pad)).collect() };
    // Steady state: one topic's log is full, each append drops the oldest.
    let kept = MemoryStore::new(config.clone());
    let append_hist = time_per(
        reps,
        || events("bench.hist.t0"),
        |v| {
            for mut e in v {
                kept.append(&mut e);
            }
        },
    );
    let live = MemoryStore::new(config.clone());
    let append_live = time_per(
        reps,
        || events("bench.live.t0"),
        |v| {
            for mut e in v {
                live.append(&mut e);
            }
        },
    );
    let encode = time_per(
        reps,
        || events("bench.hist.t0"),
        |v| {
            for e in &v {
                std::hint::black_box(e.encode());
            }
        },
    );
    // The kept copy in a ring of `size` entries: one clone in, the oldest dropped.
    let mut ring = std::collections::VecDeque::with_capacity(a.size + 1);
    let clone = time_per(
        reps,
        || events("bench.hist.t0"),
        |v| {
            for e in &v {
                ring.push_back(e.clone());
                if ring.len() > a.size {
                    drop(ring.pop_front());
                }
            }
        },
    );
    let baseline = time_per(reps, || events("bench.live.t0"), |v| drop(std::hint::black_box(v)));
    let m = |v: &Vec<f64>| median(v.clone());
    println!(
        "history store · MemoryStore::append in this process, {n} events per pass, median of {reps} passes ({} B padding, size {})",
        a.payload, a.size
    );
    println!("  append, history topic (log full: one in, one out):   {:.0} ns per event", m(&append_hist));
    println!("  append, live-only topic (the pattern check):          {:.0} ns per event", m(&append_live));
    println!("  of which Envelope::encode (to count its bytes):        {:.0} ns per event", m(&encode));
    println!("  of which the kept copy (clone into a ring, drop the oldest): {:.0} ns per event", m(&clone));
    println!("  dropping the input events (in both appends):          {:.0} ns per event", m(&baseline));
    // The embedded bus as the gateway drives it: concurrent publishers
    // (the sessions' tasks) on this process's runtime, a consumer draining
    // the node's queue as the dispatcher does. With history, each publish
    // holds the bus's order lock (an async mutex) across the store append
    // and the hand-off to the queue.
    let mut bus_rates = serde_json::Map::new();
    println!(
        "  MemoryBus::publish, {} worker threads, events/s (median of {reps} passes of {n} events):",
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    for tasks in [1usize, 4] {
        let mut line = serde_json::Map::new();
        for (label, topic) in [("history", "bench.hist.t0"), ("live", "bench.live.t0")] {
            let mut rates = Vec::new();
            for _ in 0..reps {
                rates.push(memory_bus_rate(&config, topic, tasks, n / tasks, &pad).await?);
            }
            line.insert(label.into(), json!({"events_per_s": rates.clone(), "median": median(rates)}));
        }
        let (h, l) = (line["history"]["median"].as_f64().unwrap_or(0.0), line["live"]["median"].as_f64().unwrap_or(1.0));
        println!("    {tasks} publishing task(s): history {}events/s · live-only {}events/s · history/live {:.3}", si(h), si(l), h / l);
        bus_rates.insert(format!("tasks_{tasks}"), serde_json::Value::Object(line));
    }
    emit(
        &a.common,
        json!({
            "scenario": "history-store", "memory_bus_publish": bus_rates, "events_per_pass": n, "payload": a.payload, "size": a.size,
            "ns_per_event": {
                "append_history": append_hist, "append_live": append_live, "encode": encode,
                "clone_into_ring": clone, "drop_inputs": baseline,
            },
            "median_ns_per_event": {
                "append_history": m(&append_hist), "append_live": m(&append_live), "encode": m(&encode),
                "clone_into_ring": m(&clone), "drop_inputs": m(&baseline),
            },
            "sizes": {"envelope_struct": std::mem::size_of::<Envelope>(), "value_struct": std::mem::size_of::<Value>()},
        }),
    )
}

/// The gateway's default `limits.bus_queue` (events waiting for the dispatcher).
const BUS_QUEUE: usize = 8_192;

/// Events per second through `MemoryBus::publish` from `tasks` concurrent
/// tasks, `per_task` each, into a queue drained by one consumer task.
async fn memory_bus_rate(config: &telegraphy_bus::HistoryConfig, topic: &str, tasks: usize, per_task: usize, pad: &str) -> anyhow::Result<f64> {
    use telegraphy_bus::{Bus as _, BusMetrics, Inbound, MemoryBus, MemoryStore};
    let (tx, mut rx) = tokio::sync::mpsc::channel(BUS_QUEUE);
    let bus = Arc::new(MemoryBus::with_store(Inbound::new(tx, BusMetrics::unregistered()), Arc::new(MemoryStore::new(config.clone()))));
    let consumer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(256);
        let mut n = 0usize;
        while rx.recv_many(&mut buf, 256).await > 0 {
            n += buf.len();
            buf.clear();
        }
        n
    });
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for k in 0..tasks {
        let (bus, topic, pad) = (bus.clone(), topic.to_string(), pad.to_string());
        set.spawn(async move {
            let mut failed = 0u64;
            for i in 0..per_task as u64 {
                if bus.publish(bench_envelope(&topic, ((k as u64) << 40) + i, &pad), Delivery::Accepted).await.is_err() {
                    failed += 1;
                }
            }
            failed
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        failed += r?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    drop(bus);
    let consumed = consumer.await?;
    if failed > 0 || consumed != tasks * per_task {
        bail!("{failed} publishes failed, {consumed} of {} consumed", tasks * per_task);
    }
    Ok((tasks * per_task) as f64 / elapsed)
}
