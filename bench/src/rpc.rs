//! `calls`: remote procedure calls per second and their latency.
//!
//! Callee sessions register `bench.rpc.echo` (shared `roundrobin` when
//! there are several) and answer every INVOCATION with its arguments;
//! caller sessions keep `--window` calls each in flight for `--duration`
//! seconds. The figures: calls completed per second, and CALL → RESULT
//! latency percentiles (after `--warmup`).
//!
//! `--nodes N --bus redis|amqp`: N gateway nodes on that bus; the callees
//! connect to the first, the callers to the last, so every call crosses
//! nodes over the bus. `--rate R`: the callers together make R calls per
//! second, each one call at a time on a fixed schedule (instead of keeping
//! `--window` calls in flight): the latency at a given load.
//!
//! `--http`: the procedure is served by a small HTTP endpoint in this
//! process, through the gateway's `[[rpc.http]]` (a signed POST per call)
//! instead of a WAMP callee. `--direct` calls that same endpoint straight
//! over HTTP with the same concurrency, without the gateway: the baseline
//! for the HTTP callee's overhead. Against another router (`--target`, e.g.
//! Crossbar.io), only the WAMP callee mode applies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use hdrhistogram::Histogram;
use telegraphy_wamp::{Dict, Message, Value};

use crate::load::Latency;
use crate::wamp::{self, Auth};
use crate::{client_spec, emit, lat, routers, si, Common, Kind};

const PROCEDURE: &str = "bench.rpc.echo";
const HTTP_PROCEDURE: &str = "bench.http.echo";
const RPC_SECRET: &str = "bench-rpc-secret-0123456789-0123456789";

#[derive(Args, Clone)]
pub struct CallArgs {
    #[command(flatten)]
    pub common: Common,
    /// Caller sessions.
    #[arg(long, default_value_t = 8)]
    pub callers: usize,
    /// Callee sessions (WAMP mode).
    #[arg(long, default_value_t = 1)]
    pub callees: usize,
    /// Calls each caller keeps in flight.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Seconds of calling.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds at the start whose latencies are not recorded.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Bytes of padding in each call's arguments.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Serve the procedure over HTTP through the gateway's [[rpc.http]].
    #[arg(long)]
    pub http: bool,
    /// Call the HTTP endpoint directly, without the gateway (the baseline of --http).
    #[arg(long, conflicts_with = "http")]
    pub direct: bool,
    /// Gateway nodes (callees on the first, callers on the last).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// The nodes' bus: memory, redis, amqp, or a URL.
    #[arg(long, default_value = "memory")]
    pub bus: String,
    /// Calls per second, all callers together, each caller one call at a
    /// time on a schedule (0: as fast as `--window` allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
}

/// What every caller adds to.
struct Tally {
    done: AtomicU64,
    errors: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
    recording: AtomicBool,
    stop: AtomicBool,
}

impl Tally {
    fn record(&self, started: Instant) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if self.recording.load(Ordering::Relaxed) {
            let us = started.elapsed().as_micros() as u64;
            let _ = self.histogram.lock().unwrap().record(us.max(1));
        }
    }
}

pub async fn run(a: CallArgs) -> anyhow::Result<()> {
    let web = if a.http || a.direct { Some(start_web_app().await?) } else { None };
    let mut common = a.common.clone();
    if let Some(addr) = web.filter(|_| a.http) {
        if !common.target.is_empty() {
            bail!("--http runs against the gateway this benchmark starts (its [[rpc.http]]), not --target");
        }
        common.gateway_env.push(format!("TELEGRAPHY_RPC_SECRET={RPC_SECRET}"));
        common
            .gateway_env
            .push(format!("TELEGRAPHY_RPC__HTTP=[{{procedure = \"{HTTP_PROCEDURE}\", url = \"http://{addr}/rpc\", max_concurrency = 4096}}]"));
    }
    let tally = Arc::new(Tally {
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        histogram: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let pad = "x".repeat(a.payload);
    let (label, pids, _routers) = if a.direct {
        ("direct-http".to_string(), Vec::new(), None)
    } else {
        if a.nodes > 1 && a.bus == "memory" {
            bail!("--nodes {} needs a shared bus: --bus redis or --bus amqp", a.nodes);
        }
        let r = routers(&common, Kind::Gateway { nodes: a.nodes.max(1), bus: a.bus.clone(), production_limits: false }, false).await?;
        (r.label.clone(), r.pids.clone(), Some(r))
    };
    let mut tasks = Vec::new();
    if let Some(r) = &_routers {
        let spec = client_spec(&common, r);
        let (target, calling) = (&spec.targets[0], spec.targets.last().expect("one target at least"));
        let crossing = spec.targets.len() > 1;
        if !a.http {
            for _ in 0..a.callees.max(1) {
                let mut s = wamp::open(target, None, spec.ser, &spec.realm, &Auth::Anonymous).await?;
                let mut options = Dict::new();
                if a.callees > 1 {
                    options.insert("invoke".into(), Value::Str("roundrobin".into()));
                }
                s.send(&Message::Register { request: 1, options, procedure: PROCEDURE.into() }).await?;
                match s.recv().await? {
                    Message::Registered { .. } => {}
                    other => bail!("REGISTER {PROCEDURE}: {other:?}"),
                }
                tasks.push(tokio::spawn(callee(s)));
            }
        }
        let procedure = if a.http { HTTP_PROCEDURE } else { PROCEDURE };
        let mut callers = Vec::new();
        for _ in 0..a.callers {
            callers.push(wamp::open(calling, None, spec.ser, &spec.realm, &Auth::Anonymous).await.context("a caller session")?);
        }
        if crossing {
            wait_callable(&mut callers[0], procedure).await?;
        }
        let interval = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.callers as f64 / a.rate));
        for (n, s) in callers.into_iter().enumerate() {
            tasks.push(match interval {
                Some(every) => {
                    let phase = every.mul_f64(n as f64 / a.callers as f64);
                    tokio::spawn(paced_caller(s, procedure, every, phase, pad.clone(), tally.clone()))
                }
                None => tokio::spawn(caller(s, procedure, a.window, pad.clone(), tally.clone())),
            });
        }
    } else {
        let url = format!("http://{}/rpc", web.expect("started for --direct"));
        for _ in 0..a.callers * a.window {
            tasks.push(tokio::spawn(direct_caller(url.clone(), pad.clone(), tally.clone())));
        }
    }
    let sampler = crate::procstat::Sampler::start(pids.clone(), Duration::from_millis(200));
    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    tally.recording.store(true, Ordering::Relaxed);
    let before = tally.done.load(Ordering::Relaxed);
    let (started, first) = (Instant::now(), sampler.now());
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    let done = tally.done.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed().as_secs_f64();
    let last = sampler.now();
    tally.stop.store(true, Ordering::Relaxed);
    let router_pct = match (first, last) {
        (Some(a), Some(b)) => crate::procstat::cpu_pct(&a, &b),
        _ => 0.0,
    };
    for t in tasks {
        t.abort();
    }
    let latency = Latency::of(&tally.histogram.lock().unwrap());
    let per_s = done as f64 / elapsed;
    let mode = if a.direct {
        "direct"
    } else if a.http {
        "http-callee"
    } else {
        "wamp-callee"
    };
    let shape = if a.rate > 0.0 { format!("{} calls/s asked", si(a.rate)) } else { format!("window {}", a.window) };
    println!("calls ({mode}) · {label} · {} node(s) on {} · {} callers × {shape} · {} callee(s)", a.nodes, a.bus, a.callers, a.callees);
    println!("  {} calls in {elapsed:.2} s → {} calls/s · errors {}", done, si(per_s), tally.errors.load(Ordering::Relaxed));
    println!("  latency {}", lat(&latency));
    println!("  router CPU {router_pct:.0}% (of one core)");
    emit(
        &a.common,
        serde_json::json!({
            "scenario": "calls", "mode": mode, "label": label, "callers": a.callers, "callees": a.callees, "window": a.window,
            "nodes": a.nodes, "bus": a.bus, "rate": a.rate,
            "payload": a.payload, "duration_s": a.duration, "serializer": a.common.serializer.get().label(),
            "result": {"calls": done, "calls_per_s": per_s, "errors": tally.errors.load(Ordering::Relaxed), "latency_us": latency},
            "router": {"cpu_pct": router_pct, "pids": pids},
        }),
    )?;
    Ok(())
}

/// Answers every INVOCATION with its arguments.
async fn callee(mut s: wamp::Session) -> anyhow::Result<()> {
    loop {
        match s.recv().await? {
            Message::Invocation { request, args, kwargs, .. } => s.send(&Message::Yield { request, options: Dict::new(), args, kwargs }).await?,
            Message::Interrupt { .. } => {}
            other => bail!("callee: unexpected {}", other.name()),
        }
    }
}

/// Keeps `window` calls in flight.
async fn caller(mut s: wamp::Session, procedure: &'static str, window: usize, pad: String, tally: Arc<Tally>) -> anyhow::Result<()> {
    let mut sent: std::collections::HashMap<u64, Instant> = std::collections::HashMap::new();
    let mut next: u64 = 1;
    let call = |request: u64| Message::Call {
        request,
        options: Dict::new(),
        procedure: procedure.into(),
        args: vec![Value::UInt(request), Value::Str(pad.clone())],
        kwargs: Dict::new(),
    };
    for _ in 0..window {
        sent.insert(next, Instant::now());
        s.send(&call(next)).await?;
        next += 1;
    }
    while !tally.stop.load(Ordering::Relaxed) {
        let request = match s.recv().await? {
            Message::Result { request, .. } => request,
            Message::Error { request, error, .. } => {
                if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("call error: {error}");
                }
                request
            }
            _ => continue,
        };
        if let Some(started) = sent.remove(&request) {
            tally.record(started);
        }
        sent.insert(next, Instant::now());
        s.send(&call(next)).await?;
        next += 1;
    }
    Ok(())
}

/// Waits until `procedure` is callable from this session's node (the
/// callee's registration travels to the other nodes over the bus).
async fn wait_callable(s: &mut wamp::Session, procedure: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for request in 1u64.. {
        let call = Message::Call { request, options: Dict::new(), procedure: procedure.into(), args: vec![], kwargs: Dict::new() };
        s.send(&call).await?;
        match s.recv().await? {
            Message::Result { .. } => return Ok(()),
            Message::Error { error, .. } if error == "wamp.error.no_such_procedure" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => bail!("calling {procedure} from the callers' node: {other:?}"),
        }
    }
    unreachable!()
}

/// One call at a time on a schedule: every `every`, starting after `phase`.
async fn paced_caller(
    mut s: wamp::Session,
    procedure: &'static str,
    every: Duration,
    phase: Duration,
    pad: String,
    tally: Arc<Tally>,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now() + phase;
    for n in 1u64.. {
        tokio::time::sleep_until(start + every.mul_f64((n - 1) as f64)).await;
        if tally.stop.load(Ordering::Relaxed) {
            break;
        }
        let call = Message::Call {
            request: n,
            options: Dict::new(),
            procedure: procedure.into(),
            args: vec![Value::UInt(n), Value::Str(pad.clone())],
            kwargs: Dict::new(),
        };
        let started = Instant::now();
        s.send(&call).await?;
        loop {
            match s.recv().await? {
                Message::Result { request, .. } if request == n => break,
                Message::Error { request, error, .. } if request == n => {
                    if tally.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                        eprintln!("call error: {error}");
                    }
                    break;
                }
                _ => continue,
            }
        }
        tally.record(started);
    }
    Ok(())
}

/// One call at a time, straight to the endpoint (the --direct baseline).
async fn direct_caller(url: String, pad: String, tally: Arc<Tally>) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut n = 0u64;
    while !tally.stop.load(Ordering::Relaxed) {
        n += 1;
        let body = serde_json::json!({"procedure": HTTP_PROCEDURE, "realm": "realm1", "args": [n, pad], "kwargs": {},
                                      "caller": {"session": 1, "authid": "bench", "authrole": "anonymous"}, "receive_progress": false});
        let started = Instant::now();
        match client.post(&url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                tally.record(started);
            }
            _ => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// An endpoint answering `{"result": args[0]}` (no signature check: it
/// measures the transport, as a web-app's fastest view would).
async fn start_web_app() -> anyhow::Result<SocketAddr> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/rpc",
        post(|body: axum::body::Bytes| async move {
            let call: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let answer = serde_json::json!({"result": call["args"][0]});
            ([("content-type", "application/json")], answer.to_string())
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
