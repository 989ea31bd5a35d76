//! The scale scenario: 100,000 authenticated, subscribed sessions over
//! several gateway nodes on one bus, on one machine.
//!
//! One process may open only as many files as the machine allows (20,000
//! here), so neither a single gateway nor a single load generator can hold
//! 100,000 sockets. The coordinator (`telegraphy-bench scale`) starts the
//! nodes and as many **worker** processes (`telegraphy-bench scale-worker`,
//! hidden) as the sessions need; each worker holds its share of the
//! sessions, reconnects them like a browser client does (random jitter,
//! then capped exponential backoff with full jitter) and answers the
//! coordinator's commands on stdin with one JSON line on stdout:
//!
//! * `status` — sessions up, opens, failures, deliveries so far;
//! * `reset FROM_US` — forget deliveries, record latencies of events
//!   published from `FROM_US` on;
//! * `report FIRST END` — deliveries expected, received, lost and
//!   duplicated for the events `FIRST..END`, and the latency histogram.
//!
//! The phases: open every session; a steady rate of events over many
//! topics through the bus (latency, losses, RSS and CPU per node); every
//! node stopped (SIGTERM: the gateway drains with close 1012) and started
//! again on the same ports, timed until every session is back and
//! subscribed, with each node's connection gauge sampled against its
//! limit; a second steady phase to show delivery is whole again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::Semaphore;

use crate::load::{self, ClientSpec, Latency, Publisher, Shared, RING};
use crate::ws::Target;
use crate::{procstat, wamp, ScaleArgs, WorkerArgs};

/// Sessions one worker holds at most (its own open-files limit is 20,000
/// on this machine, and it needs a few files of its own).
const PER_WORKER: usize = 17_000;

/// Topic `k` of the scenario.
fn topic(k: usize) -> String {
    format!("bench.scale.t{k}")
}

// ---------------------------------------------------------------- worker

/// Counters of one worker's sessions.
#[derive(Default)]
struct Stats {
    up: AtomicU64,
    opens: AtomicU64,
    failures: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// The worker process: holds sessions `from..to` until stdin closes.
pub(crate) async fn worker(a: WorkerArgs) -> anyhow::Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let targets = a.targets.iter().map(|t| Target::parse(t)).collect::<anyhow::Result<Vec<_>>>()?;
    let ser = match a.serializer.as_str() {
        "msgpack" => telegraphy_wamp::Serialization::Msgpack,
        _ => telegraphy_wamp::Serialization::Json,
    };
    let spec = Arc::new(ClientSpec {
        targets,
        ser,
        realm: "realm1".into(),
        jwt_secret: std::env::var("TELEGRAPHY_BENCH_JWT_SECRET").ok(),
        sources: a.sources.clone(),
        concurrency: a.concurrency,
    });
    let topics = a.topics.max(1);
    let mut per_topic = vec![0u32; topics];
    for i in a.from..a.to {
        per_topic[i % topics] += 1;
    }
    let shared = Shared::new();
    let stats = Arc::new(Stats::default());
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    for i in a.from..a.to {
        let auth = spec.auth(i, false)?;
        tokio::spawn(session_loop(i, spec.clone(), auth, topic(i % topics), shared.clone(), stats.clone(), sem.clone(), a.jitter));
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["status"] => json!({
                "up": stats.up.load(Ordering::Relaxed),
                "opens": stats.opens.load(Ordering::Relaxed),
                "failures": stats.failures.load(Ordering::Relaxed),
                "first_error": stats.first_error.lock().expect("error").clone(),
                "delivered": shared.delivered.load(Ordering::Relaxed),
            }),
            ["reset", from] => {
                shared.reset();
                shared.record_from_us.store(from.parse().unwrap_or(0), Ordering::Relaxed);
                json!({"ok": true})
            }
            ["report", first, end] => {
                let (first, end): (usize, usize) = (first.parse()?, end.parse()?);
                if end.saturating_sub(first) > RING {
                    bail!("report over {} events; the counters hold {RING}", end - first);
                }
                let (mut expected, mut received, mut lost, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
                for s in first..end {
                    let want = u64::from(per_topic[s % topics]);
                    let got = u64::from(shared.counts[s % RING].load(Ordering::Relaxed));
                    expected += want;
                    received += got;
                    lost += want.saturating_sub(got);
                    duplicates += got.saturating_sub(want);
                }
                let h = shared.latency();
                let hist: Vec<[u64; 2]> = h.iter_recorded().map(|v| [v.value_iterated_to(), v.count_at_value()]).collect();
                json!({"expected": expected, "received": received, "lost": lost, "duplicates": duplicates, "hist": hist})
            }
            _ => json!({"error": format!("unknown command {line:?}")}),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
    }
    // The coordinator is gone: end at once (the sessions' sockets close with the process).
    std::process::exit(0);
}

/// One session, kept open: reconnects after a random delay in
/// `[0, jitter)` when the gateway closes it, and backs off (0.5 s doubling
/// to 8 s, full jitter) while it cannot connect.
#[allow(clippy::too_many_arguments)]
async fn session_loop(
    i: usize,
    spec: Arc<ClientSpec>,
    auth: wamp::Auth,
    topic: String,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    sem: Arc<Semaphore>,
    jitter: f64,
) {
    let mut failed_in_row = 0u32;
    loop {
        let Ok(permit) = sem.acquire().await else { return };
        let (target, source) = spec.route(i);
        let opened = tokio::time::timeout(Duration::from_secs(30), async {
            let mut s = wamp::open(target, source, spec.ser, &spec.realm, &auth).await?;
            s.subscribe(&topic).await?;
            anyhow::Ok(s)
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("handshake timed out after 30 s")));
        drop(permit);
        match opened {
            Ok(s) => {
                failed_in_row = 0;
                stats.opens.fetch_add(1, Ordering::Relaxed);
                stats.up.fetch_add(1, Ordering::Relaxed);
                load::receive(s, shared.clone(), i).await;
                stats.up.fetch_sub(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs_f64(jitter * fastrand::f64())).await;
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                {
                    let mut first = stats.first_error.lock().expect("error");
                    if first.is_none() {
                        *first = Some(format!("{e:#}"));
                    }
                }
                let cap = (0.5 * f64::from(1u32 << failed_in_row.min(4))).min(8.0);
                failed_in_row += 1;
                tokio::time::sleep(Duration::from_secs_f64(cap * fastrand::f64())).await;
            }
        }
    }
}

// ----------------------------------------------------------- coordinator

/// A worker process and its command channel; killed when dropped.
struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    sessions: usize,
}

impl Worker {
    async fn ask(&mut self, command: &str) -> anyhow::Result<Value> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .context("a worker did not answer within 60 s")??
            .context("a worker exited; see its log in the run directory")?;
        let v: Value = serde_json::from_str(&line).with_context(|| format!("worker answer {line:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("worker: {e}");
        }
        Ok(v)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn ask_all(workers: &mut [Worker], command: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::with_capacity(workers.len());
    for w in workers.iter_mut() {
        out.push(w.ask(command).await?);
    }
    Ok(out)
}

fn sum(vals: &[Value], key: &str) -> u64 {
    vals.iter().map(|v| v[key].as_u64().unwrap_or(0)).sum()
}

/// A node's metrics, summed over labels: name → value.
async fn scrape(client: &reqwest::Client, admin_url: &str) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    let Ok(r) = client.get(format!("{admin_url}/metrics")).timeout(Duration::from_secs(2)).send().await else { return m };
    let Ok(text) = r.text().await else { return m };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let name = key.split('{').next().unwrap_or(key);
        if let Ok(v) = value.parse::<f64>() {
            *m.entry(name.to_string()).or_insert(0.0) += v;
        }
    }
    m
}

/// What a steady phase measured.
struct Steady {
    events: u64,
    expected: u64,
    received: u64,
    lost: u64,
    duplicates: u64,
    latency: Latency,
    cpu_pct: Vec<f64>,
    /// The workers' CPU, summed (percent of one core).
    workers_cpu_pct: f64,
    /// The whole machine's busy CPU (percent of one core; 200 = both cores of two).
    machine_cpu_pct: f64,
    publish_errors: u64,
}

/// Publishes `rate` events/s for `duration` over the topics, waits for
/// the deliveries, and collects what every worker received.
async fn steady(a: &ScaleArgs, workers: &mut [Worker], spec: &ClientSpec, r: &crate::Routers, duration: f64) -> anyhow::Result<Steady> {
    let warmup = Duration::from_secs_f64(a.warmup.min(duration / 2.0));
    ask_all(workers, &format!("reset {}", load::now_us() + warmup.as_micros() as u64)).await?;
    let events = (a.rate * duration).round() as u64;
    if events as usize > RING {
        bail!("{events} events in one phase; at most {RING} (lower --rate or --duration)");
    }
    let mut publisher = Publisher::new(a.publish, spec, &r.publish).await?;
    let shared = Shared::new();
    let pad: Arc<str> = Arc::from("x".repeat(a.payload));
    let topics: Vec<String> = (0..a.topics.max(1)).map(topic).collect();
    let ticks = procstat::clock_ticks();
    let cpu0: Vec<f64> = r.pids_now().iter().map(|&p| procstat::read(p, ticks).map(|x| x.0).unwrap_or(0.0)).collect();
    let wpids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    let wcpu = || wpids.iter().map(|&p| procstat::read(p, ticks).map(|x| x.0).unwrap_or(0.0)).sum::<f64>();
    let (w0, m0) = (wcpu(), procstat::CpuMark::now());
    let t0 = Instant::now();
    for seq in 0..events {
        let due = t0 + Duration::from_secs_f64(seq as f64 / a.rate);
        tokio::time::sleep_until(due.into()).await;
        publisher.publish(&topics[seq as usize % topics.len()], seq, &pad, &shared).await?;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1: Vec<f64> = r.pids_now().iter().map(|&p| procstat::read(p, ticks).map(|x| x.0).unwrap_or(0.0)).collect();
    let (w1, m1) = (wcpu(), procstat::CpuMark::now());
    publisher.finish().await;
    // Wait until deliveries stop growing for 2 s (30 s at most).
    let mut last = u64::MAX;
    let mut still = Instant::now();
    let give_up = Instant::now() + Duration::from_secs(30);
    while Instant::now() < give_up {
        let now = sum(&ask_all(workers, "status").await?, "delivered");
        if now != last {
            last = now;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let reports = ask_all(workers, &format!("report 0 {events}")).await?;
    let mut h = load::histogram();
    for rep in &reports {
        for pair in rep["hist"].as_array().into_iter().flatten() {
            let (v, n) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
            h.saturating_record_n(v, n);
        }
    }
    Ok(Steady {
        events,
        expected: sum(&reports, "expected"),
        received: sum(&reports, "received"),
        lost: sum(&reports, "lost"),
        duplicates: sum(&reports, "duplicates"),
        latency: Latency::of(&h),
        cpu_pct: cpu0.iter().zip(&cpu1).map(|(a, b)| 100.0 * (b - a) / elapsed).collect(),
        workers_cpu_pct: 100.0 * (w1 - w0) / elapsed,
        machine_cpu_pct: procstat::machine_pct(&m0, &m1).0,
        publish_errors: shared.publish_errors.load(Ordering::Relaxed),
    })
}

fn steady_json(s: &Steady) -> Value {
    json!({
        "events": s.events, "expected": s.expected, "received": s.received, "lost": s.lost,
        "duplicates": s.duplicates, "latency_us": s.latency, "cpu_pct_per_node": s.cpu_pct,
        "workers_cpu_pct": s.workers_cpu_pct, "machine_cpu_pct": s.machine_cpu_pct,
        "publish_errors": s.publish_errors,
    })
}

fn print_steady(name: &str, a: &ScaleArgs, s: &Steady) {
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "  {name}: {} events at {} /s over {} topics → {} of {} deliveries (lost {}, duplicated {}, publish errors {})",
        s.events, a.rate, a.topics, s.received, s.expected, s.lost, s.duplicates, s.publish_errors
    );
    println!(
        "    publish→deliver latency p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms ({} samples)",
        ms(s.latency.p50),
        ms(s.latency.p99),
        ms(s.latency.max),
        s.latency.count
    );
    let cpu: Vec<String> = s.cpu_pct.iter().map(|c| format!("{c:.0}%")).collect();
    println!(
        "    CPU per node (of one core): {} · load-generator workers {:.0}% · whole machine {:.0}% of {}",
        cpu.join(" · "),
        s.workers_cpu_pct,
        s.machine_cpu_pct,
        100 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}

/// Waits until the workers hold `want` sessions (or `within` passes),
/// sampling each node's connection gauge. Returns (seconds, peak
/// connections per node, last status).
async fn wait_all_up(
    workers: &mut [Worker],
    r: &crate::Routers,
    client: &reqwest::Client,
    want: u64,
    within: Duration,
) -> anyhow::Result<(f64, Vec<f64>, Vec<Value>)> {
    let t0 = Instant::now();
    let mut peak = vec![0.0f64; r._procs.len()];
    let mut last_print = Instant::now();
    loop {
        let st = ask_all(workers, "status").await?;
        for (k, p) in r._procs.iter().enumerate() {
            let m = scrape(client, &p.admin_url).await;
            peak[k] = peak[k].max(m.get("telegraphy_connections").copied().unwrap_or(0.0));
        }
        let up = sum(&st, "up");
        if up >= want {
            return Ok((t0.elapsed().as_secs_f64(), peak, st));
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!("    … {up} of {want} sessions up after {:.0} s", t0.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        if t0.elapsed() > within {
            let first = st.iter().find_map(|v| v["first_error"].as_str().map(str::to_string)).unwrap_or_default();
            bail!("only {up} of {want} sessions were up after {within:?}; first error: {first}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The coordinator.
pub(crate) async fn run(a: ScaleArgs) -> anyhow::Result<()> {
    let c = &a.common;
    let nodes = a.nodes.max(1);
    let per_node = a.sessions.div_ceil(nodes);
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    if per_node as u64 + 200 > soft {
        bail!("{per_node} sessions per node do not fit in a process's {soft} open files; use more --nodes");
    }
    let workers_n = if a.workers == 0 { a.sessions.div_ceil(PER_WORKER) } else { a.workers }.max(1);
    if a.sessions.div_ceil(workers_n) as u64 + 200 > soft {
        bail!("{} sessions per worker do not fit in {soft} open files; use more --workers", a.sessions.div_ceil(workers_n));
    }
    let bus = crate::bus_url(&a.bus);
    if bus.starts_with("memory") && nodes > 1 {
        bail!("several nodes need a bus: --bus redis or --bus amqp");
    }
    let mut r = crate::routers(c, crate::Kind::Gateway { nodes, bus: a.bus.clone(), production_limits: true }, true).await?;
    let dir = r.dir.clone().context("started routers have a directory")?;
    let spec = crate::client_spec(c, &r);
    let client = reqwest::Client::new();
    let ticks = procstat::clock_ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_base: Vec<u64> = r.pids_now().iter().map(|&p| procstat::read(p, ticks).map(|x| x.1).unwrap_or(0)).collect();
    let mut max_conn = Vec::new();
    for p in &r._procs {
        max_conn.push(scrape(&client, &p.admin_url).await.get("telegraphy_max_connections").copied().unwrap_or(0.0));
    }
    println!(
        "scale · {nodes} gateway nodes on {} · {} sessions ({} per node, limit {:?} per node) · {workers_n} worker processes · {} topics",
        bus.split("://").next().unwrap_or(""),
        a.sessions,
        per_node,
        max_conn,
        a.topics
    );

    // Workers: each a contiguous range of session indices, sessions spread over the nodes.
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    let chunk = a.sessions.div_ceil(workers_n);
    for w in 0..workers_n {
        let (from, to) = (w * chunk, ((w + 1) * chunk).min(a.sessions));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("scale-worker").args(["--from", &from.to_string(), "--to", &to.to_string(), "--topics", &a.topics.to_string()]);
        cmd.args(["--serializer", c.serializer.get().label(), "--concurrency", &c.concurrency.to_string(), "--jitter", &a.jitter.to_string()]);
        for t in &r.targets {
            cmd.args(["--target", &format!("ws://{}{}", t.addr, t.path)]);
        }
        // Each worker its own source addresses (127.0.1.x, 127.0.2.x, …): per-IP limits see several clients.
        for k in 0..c.source_ips.clamp(1, 50) {
            cmd.args(["--source", &IpAddr::from([127, 0, (w + 1) as u8, k + 2]).to_string()]);
        }
        cmd.env("TELEGRAPHY_BENCH_JWT_SECRET", r.jwt_secret.clone().unwrap_or_default());
        let log = std::fs::File::create(dir.join(format!("worker-{w}.log")))?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(log).kill_on_drop(true);
        let mut child = cmd.spawn().context("starting a scale worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        workers.push(Worker { child, stdin, stdout, sessions: to - from });
    }
    let total = workers.iter().map(|w| w.sessions as u64).sum::<u64>();

    // 1. Open every session.
    let (setup_s, _, st) = wait_all_up(&mut workers, &r, &client, total, Duration::from_secs(a.setup_timeout)).await?;
    println!("  {total} sessions authenticated (JWT) and subscribed in {setup_s:.1} s ({} failed attempts)", sum(&st, "failures"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss: Vec<u64> = r.pids_now().iter().map(|&p| procstat::read(p, ticks).map(|x| x.1).unwrap_or(0)).collect();
    let (rss_total, base_total) = (rss.iter().sum::<u64>(), rss_base.iter().sum::<u64>());
    let per_session = rss_total.saturating_sub(base_total) as f64 / total as f64;
    let mut sessions_per_node = Vec::new();
    for p in &r._procs {
        sessions_per_node.push(scrape(&client, &p.admin_url).await.get("telegraphy_sessions").copied().unwrap_or(0.0));
    }
    println!(
        "  RSS of the nodes: {:.1} MiB in all ({:.1} MiB before the sessions) → {per_session:.2} KiB per session; sessions per node {sessions_per_node:?}",
        rss_total as f64 / 1024.0,
        base_total as f64 / 1024.0
    );

    // 2. A steady rate.
    let s1 = steady(&a, &mut workers, &spec, &r, a.duration).await?;
    print_steady("steady", &a, &s1);

    // 3. Every node stopped and started again.
    let mut restart = Value::Null;
    let mut s2 = None;
    if !a.no_restart {
        let mut refused0 = 0.0;
        for p in &r._procs {
            refused0 += scrape(&client, &p.admin_url).await.get("telegraphy_connections_refused_total").copied().unwrap_or(0.0);
        }
        let st0 = ask_all(&mut workers, "status").await?;
        let (opens0, failures0) = (sum(&st0, "opens"), sum(&st0, "failures"));
        let t0 = Instant::now();
        tokio::task::block_in_place(|| {
            std::thread::scope(|s| {
                for p in r._procs.iter_mut() {
                    s.spawn(move || p.stop(Duration::from_secs(60)));
                }
            })
        });
        let stopped_s = t0.elapsed().as_secs_f64();
        let results = futures_util::future::join_all(r._procs.iter_mut().map(|p| p.start_again())).await;
        for res in results {
            res?;
        }
        let ready_s = t0.elapsed().as_secs_f64();
        println!("  restart: every node stopped (drained) in {stopped_s:.1} s, all ready again at {ready_s:.1} s");
        let (back_s, peak, st) = wait_all_up(&mut workers, &r, &client, total, Duration::from_secs(a.setup_timeout)).await?;
        let all_back_s = ready_s + back_s;
        let mut refused1 = 0.0;
        for p in &r._procs {
            refused1 += scrape(&client, &p.admin_url).await.get("telegraphy_connections_refused_total").copied().unwrap_or(0.0);
        }
        let over: Vec<usize> = peak.iter().zip(&max_conn).enumerate().filter(|(_, (p, m))| **m > 0.0 && p > m).map(|(k, _)| k).collect();
        println!(
            "  all {total} sessions back and subscribed {all_back_s:.1} s after the stop began ({back_s:.1} s after the nodes were ready); \
             {} reconnect attempts failed meanwhile, {} refused by the gateways' limits",
            sum(&st, "failures") - failures0,
            (refused1 - refused0) as i64,
        );
        println!(
            "    peak connections per node {peak:?} (limits {max_conn:?}){}",
            if over.is_empty() { String::new() } else { format!(" — OVER on nodes {over:?}") }
        );
        restart = json!({
            "stopped_s": stopped_s, "ready_s": ready_s, "back_after_ready_s": back_s, "all_back_s": all_back_s,
            "peak_connections": peak, "max_connections": max_conn, "over_limit_nodes": over,
            "refused": refused1, "refused_before": refused0,
            "reconnects": sum(&st, "opens") - opens0, "failed_attempts": sum(&st, "failures") - failures0,
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        let s = steady(&a, &mut workers, &spec, &r, a.after_restart).await?;
        print_steady("after the restart", &a, &s);
        s2 = Some(s);
    }
    let line = json!({
        "scenario": "scale",
        "label": r.label,
        "nodes": nodes,
        "bus": bus.split("://").next().unwrap_or(""),
        "sessions": total,
        "workers": workers_n,
        "topics": a.topics,
        "rate": a.rate,
        "duration_s": a.duration,
        "auth": "jwt",
        "result": {
            "setup_s": setup_s,
            "rss_kib_per_node": rss, "rss_base_kib_per_node": rss_base, "rss_total_kib": rss_total,
            "kib_per_session": per_session, "sessions_per_node": sessions_per_node,
            "steady": steady_json(&s1),
            "restart": restart,
            "after_restart": s2.as_ref().map(steady_json),
        },
    });
    crate::emit(c, line)?;
    drop(workers);
    Ok(())
}

impl crate::Routers {
    /// The routers' pids now (they change when a node is restarted).
    fn pids_now(&self) -> Vec<u32> {
        if self._procs.is_empty() {
            self.pids.clone()
        } else {
            self._procs.iter().map(|p| p.pid).collect()
        }
    }
}
