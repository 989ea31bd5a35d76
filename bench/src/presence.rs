//! `presence`: what presence costs on the bus, and how long a join takes to
//! be seen on every node.
//!
//! `--nodes N` gateway nodes on `--bus` (Redis by default). One watcher
//! session per node follows `telegraphy.presence.bench.presence.<k>` for
//! each of `--topics` topics. Then `--sessions` sessions join at `--rate`
//! per second, spread over the nodes and the topics: each opens a session
//! and subscribes (exactly) to its topic. A join is *seen* on a node when
//! that node's watcher gets a presence event naming its authid in `joined`;
//! the figures are the time from the SUBSCRIBE to that event, per node and
//! for the last node (visible everywhere).
//!
//! On Redis the benchmark also listens to the nodes' control channel
//! (`{prefix}#cluster:*`) and counts what crosses the bus: messages and
//! bytes per second while the sessions join, then while they sit idle for
//! `--idle` seconds; and each node's RSS before and after, per session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use telegraphy_wamp::{Message, Value};

use crate::load::Latency;
use crate::wamp::{self, Auth};
use crate::{client_spec, emit, fd_budget, lat, routers, si, Common, Kind};

#[derive(Args, Clone)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Gateway nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// The nodes' bus: redis, amqp, or a URL (the bus cost is measured on Redis).
    #[arg(long, default_value = "redis")]
    pub bus: String,
    /// Sessions that join.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Joins per second, all nodes together.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Topics the sessions are spread over (each followed on every node).
    #[arg(long, default_value_t = 20)]
    pub topics: usize,
    /// Seconds of measuring the bus once everyone has joined (heartbeats only).
    #[arg(long, default_value_t = 5.0)]
    pub idle: f64,
}

fn topic(k: usize) -> String {
    format!("bench.presence.{k}")
}

/// What the watchers add to.
struct Seen {
    /// authid → (when its SUBSCRIBE left, nodes that saw it, slowest so far).
    joins: Mutex<HashMap<String, (Instant, usize, u64)>>,
    per_node: Mutex<Histogram<u64>>,
    everywhere: Mutex<Histogram<u64>>,
    events: AtomicU64,
    unknown: AtomicU64,
}

/// What the bus carried on the control channel.
#[derive(Default)]
struct BusCount {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl BusCount {
    fn take(&self) -> (u64, u64) {
        (self.messages.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}

pub async fn run(a: PresenceArgs) -> anyhow::Result<()> {
    if a.nodes < 1 || a.topics < 1 || a.sessions < 1 || a.rate <= 0.0 {
        bail!("--nodes, --topics, --sessions and --rate must be positive");
    }
    fd_budget(a.sessions + a.nodes + 16)?;
    let r = routers(&a.common, Kind::Gateway { nodes: a.nodes, bus: a.bus.clone(), production_limits: false }, false).await?;
    let spec = client_spec(&a.common, &r);
    let seen = Arc::new(Seen {
        joins: Mutex::new(HashMap::with_capacity(a.sessions)),
        per_node: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        everywhere: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        events: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
    });

    // What crosses the bus on the control channel (Redis only).
    let bus = Arc::new(BusCount::default());
    let spy = match r.publish.bus_url.as_deref() {
        Some(url) if url.starts_with("redis://") => Some(spy_redis(url, &format!("{}:", a.common.namespace), bus.clone()).await?),
        _ => None,
    };

    let mut tasks = Vec::new();
    for target in &spec.targets {
        let mut w = wamp::open(target, None, spec.ser, &spec.realm, &Auth::Anonymous).await.context("a watcher session")?;
        for k in 0..a.topics {
            w.subscribe(&format!("telegraphy.presence.{}", topic(k))).await?;
        }
        tasks.push(tokio::spawn(watch(w, a.nodes, seen.clone())));
    }
    // Every node hears of the others (heartbeats) before the joins start.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let pids = r.pids.clone();
    let rss =
        |pids: &[u32]| -> Vec<u64> { pids.iter().map(|p| crate::procstat::read(*p, crate::procstat::clock_ticks()).map_or(0, |s| s.1)).collect() };
    let rss_before = rss(&pids);
    let bus_before = bus.take();
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<wamp::Session>>(1024);
    let every = Duration::from_secs_f64(1.0 / a.rate);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..a.sessions {
        tick.tick().await;
        let (target, ser, realm) = (spec.targets[i % spec.targets.len()].clone(), spec.ser, spec.realm.clone());
        let (seen, tx) = (seen.clone(), tx.clone());
        let topic = topic(i % a.topics);
        tokio::spawn(async move {
            let joined = async {
                let mut s = wamp::open(&target, None, ser, &realm, &Auth::Anonymous).await?;
                // The gateway names anonymous sessions `anonymous-<session id>`.
                seen.joins.lock().unwrap().insert(format!("anonymous-{}", s.id), (Instant::now(), 0, 0));
                s.subscribe(&topic).await?;
                Ok(s)
            };
            let _ = tx.send(joined.await).await;
        });
    }
    drop(tx);
    let mut sessions = Vec::with_capacity(a.sessions);
    let mut failed = 0;
    while let Some(s) = rx.recv().await {
        match s {
            Ok(s) => sessions.push(s),
            Err(e) => {
                if failed == 0 {
                    eprintln!("a session did not join: {e:#}");
                }
                failed += 1;
            }
        }
    }
    let joined_in = started.elapsed().as_secs_f64();
    // The last joins reach every node within a delta period and a tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.everywhere.lock().unwrap().len() < sessions.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let join_phase = started.elapsed().as_secs_f64();
    let bus_joins = bus.take();
    let rss_after = rss(&pids);
    tokio::time::sleep(Duration::from_secs_f64(a.idle)).await;
    let bus_idle = bus.take();
    for t in tasks {
        t.abort();
    }
    if let Some(s) = &spy {
        s.abort();
    }

    let per_node = Latency::of(&seen.per_node.lock().unwrap());
    let everywhere = Latency::of(&seen.everywhere.lock().unwrap());
    let missed = sessions.len() as u64 - everywhere.count;
    let joins_per_s = sessions.len() as f64 / joined_in;
    let (join_msgs, join_bytes) = (bus_joins.0 - bus_before.0, bus_joins.1 - bus_before.1);
    let (idle_msgs, idle_bytes) = (bus_idle.0 - bus_joins.0, bus_idle.1 - bus_joins.1);
    // RSS is in KiB; per session of the node's own (each node also holds
    // the directory entries of every other node's sessions).
    let rss_per_session: Vec<f64> =
        rss_before.iter().zip(&rss_after).map(|(b, a2)| (*a2 as f64 - *b as f64) * 1024.0 / (sessions.len() as f64 / pids.len() as f64)).collect();
    println!(
        "presence · {} node(s) on {} · {} sessions joined at {}/s (asked {}) over {} topics · {} failed",
        a.nodes,
        a.bus,
        sessions.len(),
        si(joins_per_s),
        si(a.rate),
        a.topics,
        failed
    );
    println!("  join seen on a node:      {}", lat(&per_node));
    println!("  join seen on every node:  {}", lat(&everywhere));
    println!("  joins never seen everywhere: {missed} · presence events received: {}", seen.events.load(Ordering::Relaxed));
    if spy.is_some() || join_msgs > 0 {
        println!(
            "  bus (control channel), while joining: {} msgs/s, {} B/s · {:.0} B per session joined",
            si(join_msgs as f64 / join_phase),
            si(join_bytes as f64 / join_phase),
            join_bytes as f64 / sessions.len().max(1) as f64
        );
        println!("  bus, idle ({} s): {} msgs/s, {} B/s", a.idle, si(idle_msgs as f64 / a.idle), si(idle_bytes as f64 / a.idle));
    }
    println!(
        "  RSS growth per node, per session of its own (its sessions and the directory entries of every session): {:?} B",
        rss_per_session.iter().map(|x| x.round() as i64).collect::<Vec<_>>()
    );
    emit(
        &a.common,
        serde_json::json!({
            "scenario": "presence", "nodes": a.nodes, "bus": a.bus, "sessions": sessions.len(), "failed": failed,
            "rate": a.rate, "topics": a.topics,
            "result": {
                "joins_per_s": joins_per_s,
                "seen_on_a_node_us": per_node, "seen_everywhere_us": everywhere, "never_seen": missed,
                "bus_join": {"messages": join_msgs, "bytes": join_bytes, "seconds": join_phase},
                "bus_idle": {"messages": idle_msgs, "bytes": idle_bytes, "seconds": a.idle},
                "rss_before_kib": rss_before, "rss_after_kib": rss_after, "rss_bytes_per_own_session": rss_per_session,
            },
        }),
    )?;
    drop(sessions);
    Ok(())
}

/// Reads a watcher's presence events and records when each join is seen.
async fn watch(mut w: wamp::Session, nodes: usize, seen: Arc<Seen>) -> anyhow::Result<()> {
    loop {
        let Message::Event { args, .. } = w.recv().await? else { continue };
        let now = Instant::now();
        seen.events.fetch_add(1, Ordering::Relaxed);
        let Some(Value::Dict(change)) = args.first() else { continue };
        let Some(Value::List(joined)) = change.get("joined") else { continue };
        for authid in joined.iter().filter_map(Value::as_str) {
            let mut joins = seen.joins.lock().unwrap();
            let Some((at, count, slowest)) = joins.get_mut(authid) else {
                seen.unknown.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let us = now.duration_since(*at).as_micros() as u64;
            *count += 1;
            *slowest = (*slowest).max(us);
            let _ = seen.per_node.lock().unwrap().record(us.max(1));
            if *count == nodes {
                let _ = seen.everywhere.lock().unwrap().record((*slowest).max(1));
            }
        }
    }
}

/// Counts the messages on the nodes' control channels (`{prefix}#cluster:*`).
async fn spy_redis(url: &str, prefix: &str, count: Arc<BusCount>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await.context("connecting to Redis to count the control messages")?;
    pubsub.psubscribe(format!("{prefix}#cluster:*")).await?;
    Ok(tokio::spawn(async move {
        let mut stream = pubsub.on_message();
        while let Some(m) = stream.next().await {
            count.messages.fetch_add(1, Ordering::Relaxed);
            count.bytes.fetch_add(m.get_payload_bytes().len() as u64, Ordering::Relaxed);
        }
    }))
}
