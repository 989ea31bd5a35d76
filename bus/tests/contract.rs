//! The `Bus` contract suite: one test per promise that the crate docs
//! (`bus/src/lib.rs`, "The `Bus` contract") and the [`Bus`] trait make, and
//! the same test body run against every adapter (`memory::ordering`,
//! `redis::ordering`, `amqp::ordering`, ...). A new adapter joins the suite
//! with a `Kind` and a module in the `contract!` macro at the end of this file.
//! The `store_*` promises do the same for the [`EventStore`] contract
//! (`bus/src/history.rs`) of the store each bus starts beside it.
//!
//! Brokers: the machine's shared Redis (127.0.0.1:6379) and RabbitMQ
//! (127.0.0.1:5672, guest/guest). Each test uses a random Redis key prefix or
//! AMQP exchange of its own (the exchange is deleted when the test ends) and
//! never reconfigures them. The outage tests start a private `redis-server`
//! or RabbitMQ node on a free port instead, kill it with SIGKILL and start it
//! again; a guard kills its whole process tree by PID however the test ends.
//!
//! No test sleeps to let something happen: waits poll a condition with a
//! deadline, "nothing else arrived" is checked with a fence event (the
//! ordering promise puts anything earlier before it), and the few fixed
//! pauses check that something does *not* happen.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use telegraphy_bus::history::{Page, StoreError};
use telegraphy_bus::pattern::PatternSet;
use telegraphy_bus::{
    Bus, BusError, BusMetrics, BusOptions, Delivery, Envelope, EventStore, Filter, HistoryConfig, Inbound, Position, PublishError, Publisher,
};
use telegraphy_wamp::{Dict, MatchPolicy, Value};
use tokio::sync::mpsc;

const REALM: &str = "realm1";
/// The longest any single expected thing may take on the shared brokers.
const WAIT: Duration = Duration::from_secs(10);
/// How long a private RabbitMQ node may take to boot (about 4 s here; the
/// machine may be busy).
const BOOT: Duration = Duration::from_secs(90);
/// "Fails fast": a publish refused while the bus is not ready.
const FAST: Duration = Duration::from_millis(500);
const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";
const SHARED_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Memory,
    Redis,
    Amqp,
}

/// One test's bus: a URL and names no other test uses.
struct Cluster {
    kind: Kind,
    url: String,
    options: BusOptions,
}

impl Cluster {
    /// On the shared broker of `kind` (memory: the embedded bus).
    fn shared(kind: Kind) -> Cluster {
        let url = match kind {
            Kind::Memory => "memory://",
            Kind::Redis => SHARED_REDIS,
            Kind::Amqp => SHARED_AMQP,
        };
        Cluster::on(kind, url.to_string())
    }

    fn on(kind: Kind, url: String) -> Cluster {
        let id = format!("contract-{:012x}", fastrand::u64(..1 << 48));
        let options = BusOptions {
            redis_key_prefix: format!("{id}:"),
            amqp_exchange: id.clone(),
            reconnect_max_delay: Duration::from_secs(2),
            connection_name: id,
            ..BusOptions::default()
        };
        Cluster { kind, url, options }
    }

    /// The same, with history kept for topics under `h.` (`size` events each).
    fn with_history(mut self, size: usize) -> Cluster {
        self.options.history = HistoryConfig { topics: PatternSet::parse(&["h.*"]).expect("a pattern"), size, ..HistoryConfig::default() };
        self
    }

    /// How many distinct nodes the bus can have: the memory bus lives inside
    /// one node.
    fn max_nodes(&self) -> usize {
        if self.kind == Kind::Memory {
            1
        } else {
            usize::MAX
        }
    }

    /// A node's bus (not waited for), consuming into a queue of `capacity`.
    fn node_with_queue(&self, capacity: usize) -> Node {
        let (tx, events) = mpsc::channel(capacity);
        let metrics = BusMetrics::unregistered();
        let started = telegraphy_bus::start(&self.url, &self.options, Inbound::new(tx, metrics.clone())).expect("the bus starts");
        let (bus, store) = (started.bus, started.store);
        assert_eq!(
            bus.kind(),
            match self.kind {
                Kind::Memory => "memory",
                Kind::Redis => "redis",
                Kind::Amqp => "amqp",
            }
        );
        Node { bus, store, events, metrics }
    }

    /// A node that is ready.
    async fn node(&self) -> Node {
        let node = self.node_with_queue(4096);
        node.until_ready(WAIT).await;
        node
    }

    /// A publishing handle that is not `node`: a publish-only client for the
    /// brokers; the memory bus has no other handle than its node's.
    async fn publisher(&self, node: &Node) -> Arc<dyn Bus> {
        match self.kind {
            Kind::Memory => node.bus.clone(),
            _ => telegraphy_bus::connect_publisher(&self.url, &self.options).await.expect("a publish-only client connects"),
        }
    }
}

impl Drop for Cluster {
    /// Test exchanges are durable like real ones: delete this test's from
    /// the shared RabbitMQ (also when the test failed). A private broker
    /// goes away whole.
    fn drop(&mut self) {
        if self.kind == Kind::Redis && self.url == SHARED_REDIS {
            self.delete_redis_keys();
        }
        if self.kind != Kind::Amqp || self.url != SHARED_AMQP {
            return;
        }
        let (url, exchange) = (self.url.clone(), self.options.amqp_exchange.clone());
        let deleted = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            rt.block_on(async move {
                tokio::time::timeout(WAIT, async move {
                    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
                    let channel = conn.create_channel().await?;
                    channel.exchange_delete(exchange.as_str().into(), lapin::options::ExchangeDeleteOptions::default()).await?;
                    // The history streams nodes declare beside it (if any).
                    for queue in [format!("{exchange}.history"), format!("{exchange}.history-epoch")] {
                        channel.queue_delete(queue.as_str().into(), lapin::options::QueueDeleteOptions::default()).await?;
                    }
                    conn.close(200, "contract test done".into()).await
                })
                .await
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(Ok(())))) {
            eprintln!("could not delete the test exchange {}: {deleted:?}", self.options.amqp_exchange);
        }
    }
}

impl Cluster {
    /// Deletes what this test's nodes wrote to the shared Redis (history
    /// settings, logs, retained events): every key under its own prefix.
    fn delete_redis_keys(&self) {
        let deleted = (|| -> ::redis::RedisResult<()> {
            let mut conn = ::redis::Client::open(self.url.as_str())?.get_connection_with_timeout(WAIT)?;
            let keys: Vec<String> = ::redis::cmd("KEYS").arg(format!("{}*", self.options.redis_key_prefix)).query(&mut conn)?;
            if !keys.is_empty() {
                ::redis::cmd("DEL").arg(keys).query::<()>(&mut conn)?;
            }
            Ok(())
        })();
        if let Err(e) = deleted {
            eprintln!("could not delete the test's Redis keys {}*: {e}", self.options.redis_key_prefix);
        }
    }
}

/// A node: its bus and the queue the bus hands consumed events to.
struct Node {
    bus: Arc<dyn Bus>,
    /// The event store beside the bus (history and retention).
    store: Option<Arc<dyn EventStore>>,
    events: mpsc::Receiver<Envelope>,
    metrics: BusMetrics,
}

impl Node {
    /// Adds an interest in `REALM` and waits until it is in force.
    async fn interest(&self, policy: MatchPolicy, pattern: &str) {
        let ticket = self.bus.add_interest(REALM, policy, pattern);
        within(WAIT, self.bus.interest_applied(ticket), &format!("interest_applied({policy:?} {pattern})")).await;
    }

    async fn until_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.bus.is_ready() {
            assert!(Instant::now() < deadline, "the {} bus did not turn ready within {within:?}", self.bus.kind());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next event the bus handed to this node.
    async fn next(&mut self, what: &str) -> Envelope {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => panic!("the bus closed this node's queue while waiting for {what}"),
            Err(_) => panic!("{what}: no event reached the node within {WAIT:?}"),
        }
    }

    /// Receives exactly `expected`, in that order (by publication id).
    async fn expect(&mut self, expected: &[&Envelope], what: &str) {
        for (n, want) in expected.iter().enumerate() {
            let got = self.next(&format!("{what}: event {n} ({})", want.topic)).await;
            assert_eq!(
                (got.publication, got.topic.as_str()),
                (want.publication, want.topic.as_str()),
                "{what}: event {n} of {} out of order, duplicated or not the one published",
                expected.len()
            );
        }
    }

    /// Receives `expected` in that order; events of `extras` may come in
    /// between (a bus may deliver more than asked), each at most once.
    async fn expect_allowing(&mut self, expected: &[&Envelope], extras: &[&Envelope], what: &str) {
        let mut extra: HashMap<u64, bool> = extras.iter().map(|e| (e.publication, false)).collect();
        for (n, want) in expected.iter().enumerate() {
            loop {
                let got = self.next(&format!("{what}: event {n} ({})", want.topic)).await;
                if got.publication == want.publication {
                    break;
                }
                match extra.get_mut(&got.publication) {
                    Some(seen) if !*seen => *seen = true,
                    _ => panic!(
                        "{what}: event {n} of {} out of order, duplicated or not published: got {} on {}",
                        expected.len(),
                        got.publication,
                        got.topic
                    ),
                }
            }
        }
    }

    /// Nothing but what the test expected arrived: a fence event published
    /// now on `topic` (which this node has an interest in) is the next one.
    async fn fence(&mut self, publisher: &dyn Bus, topic: &str, what: &str) {
        let fence = event(topic, "fence");
        publish_ok(publisher, fence.clone(), Delivery::Accepted).await;
        let got = self.next(&format!("{what}: the fence")).await;
        assert_eq!((got.publication, got.topic.as_str()), (fence.publication, topic), "{what}: an extra event arrived before the fence");
    }
}

/// An event of `REALM` on `topic`, with a fresh publication id.
fn event(topic: &str, label: &str) -> Envelope {
    Envelope {
        realm: REALM.into(),
        publication: fastrand::u64(1..=1 << 53),
        topic: topic.into(),
        args: vec![Value::from(label)],
        kwargs: Dict::new(),
        filter: Filter::default(),
        publisher: None,
        published_at_us: 0,
        retain: false,
        position: None,
    }
}

async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>, what: &str) -> T {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("{what} did not resolve within {limit:?}"))
}

async fn publish_ok(bus: &dyn Bus, event: Envelope, delivery: Delivery) {
    let topic = event.topic.clone();
    if let Err(e) = within(WAIT, bus.publish(event, delivery), "publish").await {
        panic!("publishing to {topic} ({delivery:?}) through the {} bus failed: {e}", bus.kind());
    }
}

fn is_unavailable<T>(r: &Result<T, PublishError>) -> bool {
    matches!(r, Err(PublishError::Unavailable(_)))
}

// ---------------------------------------------------------------------------
// The promises. Each takes the adapter kind and builds what it needs.
// ---------------------------------------------------------------------------

/// Readiness: a broker bus starts not ready; it accepts publishes only once
/// ready, that is with every interest in force, so the first event it
/// acknowledges reaches the node's own interests (added before it connected,
/// never awaited). Until then publishes fail fast with `Unavailable`.
async fn ready_means_subscribed(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node_with_queue(64);
    if kind != Kind::Memory {
        assert!(!node.bus.is_ready(), "a broker bus starts not ready");
    }
    node.bus.add_interest(REALM, MatchPolicy::Exact, "r.exact");
    node.bus.add_interest(REALM, MatchPolicy::Prefix, "r.pre");
    node.bus.add_interest(REALM, MatchPolicy::Wildcard, "r..wild");
    let first = publish_until_accepted(&*node.bus, || event("r.exact", "first"), WAIT, || {}).await;
    assert!(node.bus.is_ready(), "a bus that accepted a publish is ready");
    node.expect(&[&first], "the first acknowledged event").await;
    let (pre, wild) = (event("r.pre.x", "prefix"), event("r.x.wild", "wildcard"));
    publish_ok(&*node.bus, pre.clone(), Delivery::Accepted).await;
    publish_ok(&*node.bus, wild.clone(), Delivery::Accepted).await;
    node.expect(&[&pre, &wild], "interests added before the bus was ready").await;
}

/// Publishes events from `make` through `bus` until one is accepted; every
/// refusal before must be a fast `Unavailable`. Returns the accepted event.
/// `check` runs before every attempt (a private broker checks it is alive).
async fn publish_until_accepted(bus: &dyn Bus, make: impl Fn() -> Envelope, limit: Duration, mut check: impl FnMut()) -> Envelope {
    let deadline = Instant::now() + limit;
    loop {
        check();
        let e = make();
        let start = Instant::now();
        let answer = bus.publish(e.clone(), Delivery::Accepted).await;
        match answer {
            Ok(_) => return e,
            Err(PublishError::Unavailable(_)) => assert!(start.elapsed() < FAST, "a publish while not ready took {:?}", start.elapsed()),
            Err(other) => panic!("a publish while not ready failed with {other:?}, not Unavailable"),
        }
        assert!(Instant::now() < deadline, "the {} bus accepted no publish within {limit:?}", bus.kind());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Acceptance, `Delivery::Accepted`: the broker took the event, "to every
/// node subscribed at that moment, which may be none": no subscriber is no error.
async fn accepted_needs_no_subscriber(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    publish_ok(&*publisher, event("nobody.listens", "a"), Delivery::Accepted).await;
    let answers = publisher.publish_batch(vec![event("nobody.listens", "b"), event("nobody.either", "c")], Delivery::Accepted).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
}

/// Routing, `Delivery::Subscribed`: fails with `NoSubscriber` when no node
/// has an interest matching the event's realm and topic, and such an event
/// reaches no node (the broker took it and dropped it).
async fn subscribed_fails_without_subscriber(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    let no_subscriber = |r: Result<u64, PublishError>, what: &str| match r {
        Err(PublishError::NoSubscriber(_)) => {}
        other => panic!("{what}: expected NoSubscriber, got {other:?}"),
    };
    // No interest at all in this cluster.
    no_subscriber(publisher.publish(event("s.a", "1"), Delivery::Subscribed).await, "no interest anywhere");
    // An interest, but not in this topic, or not in this realm.
    node.interest(MatchPolicy::Exact, "s.a").await;
    no_subscriber(publisher.publish(event("s.b", "2"), Delivery::Subscribed).await, "another topic");
    let mut elsewhere = event("s.a", "3");
    elsewhere.realm = "realm2".into();
    no_subscriber(publisher.publish(elsewhere, Delivery::Subscribed).await, "the same topic in another realm");
    node.fence(&*publisher, "s.a", "events refused with NoSubscriber").await;
}

/// Routing, `Delivery::Subscribed`: succeeds when a node whose interest
/// matches (under each match policy) got the event, and that node has it.
async fn subscribed_succeeds_with_subscriber(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    node.interest(MatchPolicy::Exact, "s.exact").await;
    node.interest(MatchPolicy::Prefix, "s.pre").await;
    node.interest(MatchPolicy::Wildcard, "s..wild").await;
    let events = [event("s.exact", "exact"), event("s.pre", "prefix itself"), event("s.pre.x.y", "below the prefix"), event("s.x.wild", "wildcard")];
    for e in &events {
        publish_ok(&*publisher, e.clone(), Delivery::Subscribed).await;
    }
    node.expect(&events.iter().collect::<Vec<_>>(), "events published with Delivery::Subscribed").await;
}

/// Delivery: at most once, to every node whose interests match. Two
/// interests of one node matching one event still give that node one copy.
async fn delivered_once_to_every_interested_node(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut a = cluster.node().await;
    a.interest(MatchPolicy::Exact, "d.x.y").await;
    a.interest(MatchPolicy::Prefix, "d.x").await;
    let mut b = if cluster.max_nodes() > 1 {
        let b = cluster.node().await;
        b.interest(MatchPolicy::Wildcard, "d..y").await;
        Some(b)
    } else {
        None
    };
    let publisher = cluster.publisher(&a).await;
    let e = event("d.x.y", "once");
    publish_ok(&*publisher, e.clone(), Delivery::Accepted).await;
    // Nothing but `e` before a fence published after it.
    let fence = event("d.x.y", "fence");
    publish_ok(&*publisher, fence.clone(), Delivery::Accepted).await;
    a.expect(&[&e, &fence], "node a (two interests match the event)").await;
    if let Some(b) = &mut b {
        b.expect(&[&e, &fence], "node b").await;
    }
}

/// Ordering: events published through one handle one after the other
/// reach each node in that order, whichever of the node's interests (and
/// topics) they match.
async fn ordering(kind: Kind) {
    const N: usize = 300;
    let cluster = Cluster::shared(kind);
    let mut nodes = vec![cluster.node().await];
    if cluster.max_nodes() > 1 {
        nodes.push(cluster.node().await);
    }
    for node in &nodes {
        node.interest(MatchPolicy::Exact, "o.a").await;
        node.interest(MatchPolicy::Prefix, "o.b").await;
        node.interest(MatchPolicy::Wildcard, "o..c").await;
    }
    let publisher = cluster.publisher(&nodes[0]).await;
    let topics = ["o.a", "o.b.1", "o.x.c", "o.b", "o.a"];
    let events: Vec<Envelope> = (0..N).map(|n| event(topics[n % topics.len()], &n.to_string())).collect();
    for e in &events {
        publish_ok(&*publisher, e.clone(), Delivery::Accepted).await;
    }
    let expected: Vec<&Envelope> = events.iter().collect();
    for (n, node) in nodes.iter_mut().enumerate() {
        node.expect(&expected, &format!("node {n}")).await;
    }
}

/// Interest: once `interest_applied` resolved, an event published is
/// routed to the node, under each match policy (a RabbitMQ prefix as whole
/// words, as `docs/bus.md` says), with no retry and no delay.
async fn interest_applied_means_routed(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    let cases = [
        (MatchPolicy::Exact, "i.exact", "i.exact"),
        (MatchPolicy::Prefix, "i.pre", "i.pre"),
        (MatchPolicy::Prefix, "i.pre2", "i.pre2.x.y"),
        (MatchPolicy::Wildcard, "i..wild", "i.x.wild"),
        (MatchPolicy::Wildcard, ".i2.", "a.i2.b"),
    ];
    for (policy, pattern, topic) in cases {
        node.interest(policy, pattern).await;
        let (accepted, subscribed) = (event(topic, "accepted"), event(topic, "subscribed"));
        publish_ok(&*publisher, accepted.clone(), Delivery::Accepted).await;
        // Subscribed right away: the broker must already count the node.
        publish_ok(&*publisher, subscribed.clone(), Delivery::Subscribed).await;
        node.expect(&[&accepted, &subscribed], &format!("right after interest_applied({policy:?} {pattern})")).await;
    }
}

/// Interest: removing one interest leaves the others in force, also where
/// two map to one broker subscription or binding (Redis: prefix `c.d.` and
/// wildcard `c.d.` are both the pattern `c.d.*`; RabbitMQ: prefix `c.d` and
/// prefix `c.d.` are both the binding `c.d.#`); removing the last one ends
/// routing (`NoSubscriber`).
///
/// The contract promises no more than that ("a bus may deliver more than
/// was asked for": the memory bus hands every event to its node, whose hub
/// filters it), and `remove_interest` has no ticket to wait for, so "stops
/// routing" is checked as "`NoSubscriber` within a deadline".
async fn removing_an_interest_keeps_the_others(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    // (removed first, kept, a topic only these two match)
    let pairs = [
        ((MatchPolicy::Prefix, "ca.d."), (MatchPolicy::Wildcard, "ca.d."), "ca.d.e"),
        ((MatchPolicy::Prefix, "cb.d."), (MatchPolicy::Prefix, "cb.d"), "cb.d.e"),
    ];
    for ((p1, removed), (p2, kept), topic) in pairs {
        node.interest(p1, removed).await;
        node.interest(p2, kept).await;
        node.bus.remove_interest(REALM, p1, removed);
        // The other still routes: checked a few times while the removal is
        // being applied.
        for round in 0..5 {
            let e = event(topic, &format!("round {round}"));
            publish_ok(&*publisher, e.clone(), Delivery::Subscribed).await;
            node.expect(&[&e], &format!("{p2:?} {kept} after removing {p1:?} {removed}")).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node.bus.remove_interest(REALM, p2, kept);
        // Until the removal is applied, a probe still routes (and reaches
        // the node: it got it).
        let deadline = Instant::now() + WAIT;
        let mut routed = Vec::new();
        loop {
            let probe = event(topic, "after removing both");
            match publisher.publish(probe.clone(), Delivery::Subscribed).await {
                Err(PublishError::NoSubscriber(_)) => break,
                Ok(_) => assert!(Instant::now() < deadline, "{topic} still routed {WAIT:?} after its last interest was removed"),
                Err(e) => panic!("after removing the last interest: {e}"),
            }
            routed.push(probe);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        node.expect(&routed.iter().collect::<Vec<_>>(), "probes routed while the removal was applied").await;
    }
}

/// `publish_batch`: answers every event, in order, like as many `publish`
/// calls one after the other: per-event `NoSubscriber` among successes,
/// and the routed events arrive in order. An empty batch answers nothing.
async fn publish_batch_answers_each_in_order(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    node.interest(MatchPolicy::Prefix, "b.yes").await;
    assert!(publisher.publish_batch(Vec::new(), Delivery::Subscribed).await.is_empty(), "an empty batch answers nothing");
    let events: Vec<Envelope> = (0..60).map(|n| event(if n % 3 == 2 { "b.no" } else { "b.yes.x" }, &n.to_string())).collect();
    let answers = publisher.publish_batch(events.clone(), Delivery::Subscribed).await;
    assert_eq!(answers.len(), events.len(), "one answer per event");
    for (n, (e, answer)) in events.iter().zip(&answers).enumerate() {
        match (e.topic.as_str(), answer) {
            ("b.yes.x", Ok(_)) | ("b.no", Err(PublishError::NoSubscriber(_))) => {}
            (topic, other) => panic!("batch answer {n} (topic {topic}): {other:?}"),
        }
    }
    let routed: Vec<&Envelope> = events.iter().filter(|e| e.topic == "b.yes.x").collect();
    node.expect(&routed, "the routed events of a Subscribed batch").await;
    // Accepted: every event is accepted, routed or not. (The memory bus
    // hands the others to its node too: more than asked is allowed.)
    let events: Vec<Envelope> = (0..60).map(|n| event(if n % 3 == 2 { "b.no" } else { "b.yes.x" }, &n.to_string())).collect();
    let answers = publisher.publish_batch(events.clone(), Delivery::Accepted).await;
    assert!(answers.len() == events.len() && answers.iter().all(Result::is_ok), "{answers:?}");
    let fence = event("b.yes", "fence");
    publish_ok(&*publisher, fence.clone(), Delivery::Accepted).await;
    let mut expected: Vec<&Envelope> = events.iter().filter(|e| e.topic == "b.yes.x").collect();
    expected.push(&fence);
    let extras: Vec<&Envelope> = events.iter().filter(|e| e.topic == "b.no").collect();
    node.expect_allowing(&expected, &extras, "the routed events of an Accepted batch").await;
}

/// `Delivery::Subscribed` answers each publish for its own event, also when
/// publishes through one handle overlap (a node's sessions publish at once).
async fn concurrent_subscribed_publishes_answer_each(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    node.interest(MatchPolicy::Exact, "cc.yes").await;
    for round in 0..3 {
        let events: Vec<Envelope> = (0..40).map(|n| event(if n % 2 == 0 { "cc.yes" } else { "cc.no" }, &format!("{round}.{n}"))).collect();
        let answers = futures_util::future::join_all(events.iter().map(|e| publisher.publish(e.clone(), Delivery::Subscribed))).await;
        let wrong: Vec<String> = events
            .iter()
            .zip(&answers)
            .filter(|(e, a)| !matches!((e.topic.as_str(), a), ("cc.yes", Ok(_)) | ("cc.no", Err(PublishError::NoSubscriber(_)))))
            .map(|(e, a)| format!("{} {:?}: {a:?}", e.topic, e.args[0]))
            .collect();
        assert!(
            wrong.is_empty(),
            "round {round}: {} of {} overlapping publishes answered for another event:\n{}",
            wrong.len(),
            events.len(),
            wrong.join("\n")
        );
        // Each routed event arrives once (overlapping publishes have no order).
        let mut routed: HashMap<u64, usize> = events.iter().filter(|e| e.topic == "cc.yes").map(|e| (e.publication, 0)).collect();
        for n in 0..routed.len() {
            let got = node.next(&format!("round {round}: routed event {n}")).await;
            let seen = routed.get_mut(&got.publication).unwrap_or_else(|| panic!("round {round}: an event nobody published here: {got:?}"));
            *seen += 1;
            assert_eq!(*seen, 1, "round {round}: an event arrived twice");
        }
    }
    node.fence(&*publisher, "cc.yes", "after overlapping publishes").await;
}

/// The envelope survives the bus: what a node gets equals what was
/// published, every field (payload types, filter lists, publisher).
async fn envelope_round_trip(kind: Kind) {
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node().await;
    let publisher = cluster.publisher(&node).await;
    node.interest(MatchPolicy::Prefix, "env").await;
    let mut kwargs = Dict::new();
    kwargs.insert("nested".into(), Value::List(vec![Value::Null, Value::Bool(true), Value::Dict(Dict::new())]));
    kwargs.insert("ünïcødé ✓".into(), Value::from("värde"));
    let full = Envelope {
        realm: REALM.into(),
        publication: (1 << 53) - 1,
        topic: "env.full".into(),
        args: vec![
            Value::UInt(u64::MAX),
            Value::Int(-42),
            Value::Int(i64::MIN),
            Value::Float(-0.1),
            Value::from("text"),
            Value::Bin(vec![0, 255, 1]),
            Value::List(vec![Value::UInt(1), Value::from("two")]),
        ],
        kwargs,
        filter: Filter {
            exclude: vec![1, 2],
            eligible: Some(vec![3]),
            exclude_authid: vec!["mallory".into()],
            eligible_authid: Some(vec![]),
            exclude_authrole: vec!["anonymous".into()],
            eligible_authrole: Some(vec!["admin".into(), "user".into()]),
        },
        publisher: Some(Publisher {
            node: u64::MAX,
            session: 7,
            authid: "alice".into(),
            authrole: "user".into(),
            exclude_me: false,
            disclose_me: true,
        }),
        published_at_us: 1_700_000_000_000_000,
        retain: false,
        position: None,
    };
    let plain = event("env.plain", "plain");
    for e in [&full, &plain] {
        publish_ok(&*publisher, e.clone(), Delivery::Accepted).await;
        let got = node.next(&e.topic).await;
        assert_eq!(&got, e, "the envelope changed on the {} bus", publisher.kind());
    }
}

/// Backpressure: when the node's queue is full the adapter stops reading
/// (the memory bus: `publish` waits for room) and loses nothing meanwhile,
/// within the broker's own limits.
async fn backpressure_stops_reading(kind: Kind) {
    const QUEUE: usize = 8;
    const N: usize = 200;
    let cluster = Cluster::shared(kind);
    let mut node = cluster.node_with_queue(QUEUE);
    node.until_ready(WAIT).await;
    node.interest(MatchPolicy::Exact, "bp").await;
    let publisher = cluster.publisher(&node).await;
    let events: Vec<Envelope> = (0..N).map(|n| event("bp", &n.to_string())).collect();
    let sending = {
        let (publisher, events) = (publisher.clone(), events.clone());
        tokio::spawn(async move {
            for e in events {
                publisher.publish(e, Delivery::Accepted).await?;
            }
            Ok::<(), PublishError>(())
        })
    };
    // Let the bus fill the queue; it must then stop taking events.
    let deadline = Instant::now() + WAIT;
    while node.metrics.received.get() < QUEUE as u64 {
        assert!(Instant::now() < deadline, "the queue did not fill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // At most one more is taken and waiting for room.
    assert!(node.metrics.received.get() <= QUEUE as u64 + 1, "the bus took {} events into a queue of {QUEUE}", node.metrics.received.get());
    if kind == Kind::Memory {
        assert!(!sending.is_finished(), "the memory bus's publish waits for room in a full queue");
    }
    node.expect(&events.iter().collect::<Vec<_>>(), "events published while the queue was full").await;
    within(WAIT, sending, "the publisher").await.expect("the publisher task").expect("every publish accepted");
}

// ---------------------------------------------------------------------------
// The `EventStore` contract (`bus/src/history.rs`): the store beside each
// bus, read by resumes and `wamp.subscription.get_events`.
// ---------------------------------------------------------------------------

impl Node {
    fn store(&self) -> &dyn EventStore {
        self.store.as_deref().unwrap_or_else(|| panic!("the {} bus has no event store", self.bus.kind()))
    }

    async fn read(&self, topic: &str, after: Option<Position>, limit: usize) -> Page {
        let read = within(WAIT, self.store().read(REALM, topic, after, limit), "EventStore::read").await;
        read.unwrap_or_else(|e| panic!("reading {topic} from the {} store: {e}", self.store().kind()))
    }

    /// Publishes `events` through this node's bus and takes them back from
    /// its queue (the node has an interest in their topics): the copies
    /// carry the positions the bus gave them.
    async fn publish_and_receive(&mut self, events: &[Envelope], what: &str) -> Vec<Envelope> {
        let mut received = Vec::new();
        for e in events {
            // Stamped like a publisher does: the store keeps events for `ttl` after it.
            let stamped = Envelope { published_at_us: telegraphy_bus::now_us(), ..e.clone() };
            publish_ok(&*self.bus, stamped, Delivery::Accepted).await;
        }
        for (n, want) in events.iter().enumerate() {
            let got = self.next(&format!("{what}: event {n}")).await;
            assert_eq!(got.args, want.args, "{what}: event {n} is not the one published");
            received.push(got);
        }
        received
    }
}

fn publications(events: &[Envelope]) -> Vec<u64> {
    events.iter().map(|e| e.publication).collect()
}

/// Order and bounds: a history topic's events get positions in one epoch
/// with growing offsets, and the publication id live delivery carries *is*
/// the position. `read` returns them oldest first; it keeps the newest
/// `size` and says so (`first`, `head`); a read after a position returns
/// what followed it; a position of another epoch reads as no events (with
/// the log's epoch, so the reader can tell "lost"). `head` is the newest
/// position, and `None` for a topic that keeps no history.
async fn store_order_and_bounds(kind: Kind) {
    const SIZE: usize = 5;
    let cluster = Cluster::shared(kind).with_history(SIZE);
    let mut node = cluster.node().await;
    node.interest(MatchPolicy::Exact, "h.order").await;
    let published: Vec<Envelope> = (0..8).map(|n| event("h.order", &n.to_string())).collect();
    let live = node.publish_and_receive(&published, "live").await;

    let positions: Vec<Position> = live.iter().map(|e| e.position.unwrap_or_else(|| panic!("no position on {}", e.topic))).collect();
    for (e, p) in live.iter().zip(&positions) {
        assert_eq!(e.publication, p.publication(), "the publication id is the position");
    }
    assert!(positions.windows(2).all(|w| w[0].epoch == w[1].epoch && w[0].offset < w[1].offset), "one epoch, growing offsets: {positions:?}");

    let page = node.read("h.order", None, 100).await;
    assert_eq!(publications(&page.events), publications(&live[8 - SIZE..]), "the newest {SIZE}, oldest first");
    assert_eq!(page.epoch, Some(positions[0].epoch));
    assert_eq!((page.first, page.head), (positions[8 - SIZE].offset, positions[7].offset), "first and head say what is kept");
    assert_eq!(
        page.events.iter().map(|e| e.position).collect::<Vec<_>>(),
        positions[8 - SIZE..].iter().map(|p| Some(*p)).collect::<Vec<_>>(),
        "read events carry their positions"
    );

    let after = node.read("h.order", Some(positions[5]), 100).await;
    assert_eq!(publications(&after.events), publications(&live[6..]), "a read after a position: what followed it");
    let limited = node.read("h.order", Some(positions[3]), 2).await;
    assert_eq!(publications(&limited.events), publications(&live[4..6]), "at most `limit`, oldest first");
    let newest = node.read("h.order", None, 2).await;
    assert_eq!(publications(&newest.events), publications(&live[6..]), "no position: the newest `limit`");

    let other_epoch = Position { epoch: positions[0].epoch.wrapping_add(1).max(1), offset: positions[5].offset };
    let other = node.read("h.order", Some(other_epoch), 100).await;
    assert!(other.events.is_empty(), "a position of another epoch reads as no events: {:?}", publications(&other.events));
    assert_eq!(other.epoch, Some(positions[0].epoch), "and says the log's epoch");

    let head = within(WAIT, node.store().head(REALM, "h.order"), "head").await.expect("head");
    assert_eq!(head, Some(positions[7]));
    let none = within(WAIT, node.store().head(REALM, "nohistory.order"), "head").await.expect("head");
    assert_eq!(none, None, "a topic that keeps no history has no head");
}

/// What is kept: an event whose filter names session ids is delivered live
/// but never kept; filters by authid and authrole are kept with the event.
async fn store_keeps_no_session_filtered_events(kind: Kind) {
    let cluster = Cluster::shared(kind).with_history(100);
    let mut node = cluster.node().await;
    node.interest(MatchPolicy::Exact, "h.kept").await;
    let mut by_session = event("h.kept", "eligible session");
    by_session.filter.eligible = Some(vec![42]);
    let mut excluding = event("h.kept", "excluded session");
    excluding.filter.exclude = vec![43];
    let mut by_authid = event("h.kept", "eligible authid");
    by_authid.filter.eligible_authid = Some(vec!["alice".into()]);
    let plain = event("h.kept", "plain");
    let live = node.publish_and_receive(&[by_session, excluding, by_authid, plain], "live").await;
    let page = node.read("h.kept", None, 100).await;
    assert_eq!(publications(&page.events), publications(&live[2..]), "kept: the authid-filtered and the plain event, not the session-filtered ones");
    assert_eq!(page.events[0].filter.eligible_authid, Some(vec!["alice".to_string()]), "the authid filter is kept with the event");
}

/// Retention: the newest retained event per distinct filter, newest first,
/// a few at most; an event published without `retain` replaces nothing.
async fn store_retention(kind: Kind) {
    let cluster = Cluster::shared(kind).with_history(100);
    let mut node = cluster.node().await;
    node.interest(MatchPolicy::Exact, "h.retained").await;
    let retained = |label: &str| Envelope { retain: true, ..event("h.retained", label) };
    let first = retained("first");
    let second = retained("second");
    let not_retained = event("h.retained", "not retained");
    let mut for_alice = retained("for alice");
    for_alice.filter.eligible_authid = Some(vec!["alice".into()]);
    let live = node.publish_and_receive(&[first, second, not_retained, for_alice], "live").await;
    let kept = within(WAIT, node.store().retained(REALM, "h.retained"), "retained").await.expect("retained");
    assert_eq!(
        publications(&kept),
        vec![live[3].publication, live[1].publication],
        "newest first, one per filter; the unretained event replaced nothing"
    );
    let none = within(WAIT, node.store().retained(REALM, "h.never-retained"), "retained").await.expect("retained");
    assert!(none.is_empty());
}

/// Outages (broker adapters): the bus connects in the background (not
/// ready, publishes and batches fail fast with `Unavailable`,
/// `interest_applied` resolves at once while disconnected); when the broker
/// is there it turns ready with every interest in force; when the broker
/// dies it turns not ready and fails publishes fast; it reconnects by
/// itself and re-applies the interest set as it is now (added during the
/// outage: in force; removed: gone), and the first event it accepts again
/// reaches its own interests.
async fn outage(kind: Kind) {
    let mut broker = PrivateBroker::new(kind);
    let cluster = Cluster::on(kind, broker.url());
    let mut node = cluster.node_with_queue(64);

    // The broker is not there yet.
    let tickets = [
        node.bus.add_interest(REALM, MatchPolicy::Exact, "u.exact"),
        node.bus.add_interest(REALM, MatchPolicy::Prefix, "u.pre"),
        node.bus.add_interest(REALM, MatchPolicy::Wildcard, "u..wild"),
    ];
    for t in tickets {
        within(FAST, node.bus.interest_applied(t), "interest_applied while the broker is absent").await;
    }
    not_ready_throughout(&node, Duration::from_millis(300), "before the broker started").await;
    refuses_fast(&node, "before the broker started").await;

    broker.start();
    let first = publish_until_accepted(&*node.bus, || event("u.exact", "first after start"), BOOT, || broker.assert_alive()).await;
    node.expect(&[&first], "the first event accepted once the broker was there").await;
    all_interests_route(&mut node, &["u.exact", "u.pre.x", "u.x.wild"], "after the first connect").await;

    // The broker dies.
    broker.kill();
    let deadline = Instant::now() + WAIT;
    while node.bus.is_ready() {
        assert!(Instant::now() < deadline, "still ready {WAIT:?} after the broker was killed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    refuses_fast(&node, "during the outage").await;
    node.bus.remove_interest(REALM, MatchPolicy::Wildcard, "u..wild");
    let added = node.bus.add_interest(REALM, MatchPolicy::Exact, "u.added");
    within(FAST, node.bus.interest_applied(added), "interest_applied during the outage").await;
    not_ready_throughout(&node, Duration::from_millis(300), "during the outage").await;

    // The broker is back: the node is ready again once its interests are.
    broker.start();
    let first = publish_until_accepted(&*node.bus, || event("u.exact", "first after the outage"), BOOT, || broker.assert_alive()).await;
    node.expect(&[&first], "the first event accepted after the outage").await;
    all_interests_route(&mut node, &["u.exact", "u.pre.x", "u.added"], "after the outage").await;
    match node.bus.publish(event("u.x.wild", "removed"), Delivery::Subscribed).await {
        Err(PublishError::NoSubscriber(_)) => {}
        other => panic!("an interest removed during the outage is in force again: {other:?}"),
    }
    assert!(node.metrics.reconnects.get() >= 1, "the reconnect was not counted");
}

/// Outages, for a publish-only client (`connect_publisher`: the CLI and the
/// `telegraphy-publisher` library, long-lived in a web app): it is an adapter
/// too, so it turns not ready while its broker is gone and recovers by itself.
async fn publish_only_client_recovers(kind: Kind) {
    let mut broker = PrivateBroker::new(kind);
    let cluster = Cluster::on(kind, broker.url());
    broker.start();
    let mut node = cluster.node_with_queue(64);
    node.until_ready(BOOT).await;
    node.interest(MatchPolicy::Exact, "p.x").await;
    let client = telegraphy_bus::connect_publisher(&cluster.url, &cluster.options).await.expect("a publish-only client connects");
    let before = event("p.x", "before");
    publish_ok(&*client, before.clone(), Delivery::Accepted).await;
    node.expect(&[&before], "through the publish-only client").await;

    broker.kill();
    let deadline = Instant::now() + WAIT;
    while client.is_ready() {
        assert!(Instant::now() < deadline, "the publish-only client still says it is ready {WAIT:?} after its broker was killed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.start();
    node.until_ready(BOOT).await;
    let after = publish_until_accepted(&*client, || event("p.x", "after the outage"), WAIT, || broker.assert_alive()).await;
    node.expect(&[&after], "through the publish-only client after the outage").await;
}

async fn not_ready_throughout(node: &Node, period: Duration, when: &str) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(!node.bus.is_ready(), "the bus says it is ready {when}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn refuses_fast(node: &Node, when: &str) {
    let start = Instant::now();
    let answer = node.bus.publish(event("u.exact", "refused"), Delivery::Accepted).await;
    assert!(is_unavailable(&answer), "a publish {when}: {answer:?}");
    let answers = node.bus.publish_batch(vec![event("u.exact", "refused 1"), event("u.pre", "refused 2")], Delivery::Subscribed).await;
    assert!(answers.len() == 2 && answers.iter().all(is_unavailable), "a batch {when}: {answers:?}");
    assert!(start.elapsed() < FAST, "refusing {when} took {:?}", start.elapsed());
}

/// Each topic's event, published with `Delivery::Subscribed` through the
/// node itself, is accepted and reaches the node, in order.
async fn all_interests_route(node: &mut Node, topics: &[&str], when: &str) {
    let events: Vec<Envelope> = topics.iter().map(|t| event(t, when)).collect();
    for e in &events {
        publish_ok(&*node.bus, e.clone(), Delivery::Subscribed).await;
    }
    node.expect(&events.iter().collect::<Vec<_>>(), &format!("every interest {when}")).await;
}

// ---------------------------------------------------------------------------
// What a publish-only client's connect reports.
// ---------------------------------------------------------------------------

/// The store's outage promise, on Redis (where the store is the broker;
/// the memory and RabbitMQ stores live in the node): a read while Redis is
/// gone fails with `Unavailable`, never answers from nothing; once Redis
/// is back the store answers again.
#[tokio::test]
async fn redis_store_read_fails_while_redis_is_gone() {
    let mut broker = PrivateBroker::new(Kind::Redis);
    let cluster = Cluster::on(Kind::Redis, broker.url()).with_history(10);
    broker.start();
    let mut node = cluster.node_with_queue(64);
    node.until_ready(BOOT).await;
    node.interest(MatchPolicy::Exact, "h.outage").await;
    let live = node.publish_and_receive(&[event("h.outage", "before")], "before the outage").await;
    assert_eq!(publications(&node.read("h.outage", None, 10).await.events), publications(&live));

    broker.kill();
    match within(WAIT, node.store().read(REALM, "h.outage", None, 10), "a read while Redis is gone").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a read while Redis is gone: {other:?}"),
    }
    broker.start();
    node.until_ready(BOOT).await;
    let again = node.publish_and_receive(&[event("h.outage", "after")], "after the outage").await;
    let page = node.read("h.outage", None, 10).await;
    // This private Redis keeps nothing on disk: the log starts again.
    assert_eq!(publications(&page.events), publications(&again), "the store answers again once Redis is back");
}

/// Redis's bound: a node that takes nothing while more than its buffer
/// (`redis_buffer_bytes`) of events arrive for it does not buffer them
/// without limit; its session starts over (as Redis drops a subscriber past
/// its output-buffer limit), the events in between are missed, and it is
/// ready and delivering again afterwards.
#[tokio::test]
async fn redis_a_node_far_behind_starts_over() {
    const QUEUE: usize = 4;
    const BUFFER: usize = 64 << 10;
    let n = 5000;
    let mut cluster = Cluster::shared(Kind::Redis);
    cluster.options.redis_buffer_bytes = BUFFER;
    let mut node = cluster.node_with_queue(QUEUE);
    node.until_ready(WAIT).await;
    node.interest(MatchPolicy::Exact, "far").await;
    let publisher = cluster.publisher(&node).await;
    let events: Vec<Envelope> = (0..n).map(|k| event("far", &format!("{k:0>64}"))).collect();
    let size = events[0].encode().len();
    assert!(n * size > 2 * BUFFER, "the events outgrow the buffer");
    for chunk in events.chunks(500) {
        for answer in publisher.publish_batch(chunk.to_vec(), Delivery::Accepted).await {
            answer.expect("accepted");
        }
    }
    let deadline = Instant::now() + WAIT;
    while node.metrics.reconnects.get() < 1 {
        assert!(Instant::now() < deadline, "the node did not start over after falling {n} events behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What it holds is bounded: the node's queue and the buffer (plus one in
    // hand), never every event published.
    let mut held = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), node.events.recv()).await {
        held += 1;
    }
    assert!(held <= BUFFER / size + QUEUE + 1, "the node held {held} events of {size} bytes with a buffer of {BUFFER} bytes");
    node.until_ready(WAIT).await;
    let after = event("far", "after");
    publish_ok(&*publisher, after.clone(), Delivery::Accepted).await;
    let got = node.next("the event after the node started over").await;
    assert_eq!(got.publication, after.publication);
}

/// More subscriptions than the buffer holds events: Redis confirms each, and
/// the confirmations must not count as events the node fell behind on (it
/// would start over, subscribe again, and never be ready). Also after a
/// reconnect, when every interest is subscribed again at once.
#[tokio::test]
async fn redis_more_channels_than_the_buffer_holds() {
    let n = 5000;
    let mut broker = PrivateBroker::new(Kind::Redis);
    let mut cluster = Cluster::on(Kind::Redis, broker.url());
    cluster.options.redis_buffer_bytes = 4096;
    broker.start();
    let mut node = cluster.node_with_queue(64);
    node.until_ready(BOOT).await;
    let mut ticket = 0;
    for k in 0..n {
        ticket = node.bus.add_interest(REALM, MatchPolicy::Exact, &format!("many.t{k}"));
    }
    within(WAIT, node.bus.interest_applied(ticket), "interest_applied for every channel").await;
    let publisher = cluster.publisher(&node).await;
    let last = event(&format!("many.t{}", n - 1), "last");
    publish_ok(&*publisher, last.clone(), Delivery::Subscribed).await;
    assert_eq!(node.next("an event on the last channel").await.publication, last.publication);
    broker.kill();
    let deadline = Instant::now() + WAIT;
    while node.bus.is_ready() {
        assert!(Instant::now() < deadline, "the node did not notice Redis was gone");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.start();
    node.until_ready(BOOT).await;
    let again = event("many.t0", "again");
    let publisher = cluster.publisher(&node).await;
    publish_ok(&*publisher, again.clone(), Delivery::Subscribed).await;
    assert_eq!(node.next("an event after the reconnect").await.publication, again.publication);
    assert_eq!(node.metrics.reconnects.get(), 1, "the node started over only for the restart");
}

/// RabbitMQ refusing the login is told apart from an unreachable broker
/// (the CLI and the publisher library answer "unauthorized" for one,
/// "unavailable" for the other), from lapin's typed error, not its text.
#[tokio::test]
async fn amqp_refused_login_is_an_auth_error() {
    let refused = Cluster::on(Kind::Amqp, "amqp://guest:not-the-password@127.0.0.1:5672/%2f".into());
    match telegraphy_bus::connect_publisher(&refused.url, &refused.options).await.err() {
        Some(BusError::Auth { url, source }) => {
            assert_eq!(url, "amqp://guest:***@127.0.0.1:5672/%2f");
            let lapin = source.downcast_ref::<lapin::Error>().expect("the source is lapin's own error");
            assert!(lapin.to_string().contains("ACCESS"), "the source quotes RabbitMQ: {lapin}");
        }
        other => panic!("a wrong password: {other:?}"),
    }
    let unreachable = Cluster::on(Kind::Amqp, format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()));
    match telegraphy_bus::connect_publisher(&unreachable.url, &unreachable.options).await.err() {
        Some(BusError::Connect { .. }) => {}
        other => panic!("nothing listening: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Private brokers for the outage tests.
// ---------------------------------------------------------------------------

/// The RabbitMQ scripts themselves, not the /usr/sbin wrapper (which
/// switches to the rabbitmq user).
const RABBIT_BIN: &str = "/usr/lib/rabbitmq/bin";

/// A redis-server or RabbitMQ node of this test's own, on a free port,
/// killed (its whole process tree, by PID) when dropped.
struct PrivateBroker {
    kind: Kind,
    port: u16,
    /// RabbitMQ's Erlang distribution port.
    dist_port: u16,
    /// Data, logs, cookie and config (RabbitMQ); removed when dropped.
    dir: PathBuf,
    /// RabbitMQ's node name (kept across restarts, with its data).
    name: String,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Reserves a port and a directory; [`PrivateBroker::start`] starts it.
    fn new(kind: Kind) -> PrivateBroker {
        let id = format!("{:08x}", fastrand::u32(..));
        let dir = std::env::temp_dir().join(format!("telegraphy-contract-{id}"));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let broker = PrivateBroker { kind, port: free_port(), dist_port: free_port(), dir, name: format!("contract-{id}@localhost"), child: None };
        if kind == Kind::Amqp {
            let home = broker.dir.join("home");
            std::fs::create_dir_all(&home).expect("a home directory");
            let cookie = home.join(".erlang.cookie");
            std::fs::write(&cookie, format!("{:016X}{:016X}", fastrand::u64(..), fastrand::u64(..))).expect("a cookie");
            std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o600)).expect("cookie mode");
            std::fs::write(broker.dir.join("enabled_plugins"), "[].\n").expect("a plugin list");
            // Our own config file, so the shared node's is not read.
            std::fs::write(broker.dir.join("rabbitmq.conf"), "disk_free_limit.absolute = 10MB\n").expect("a config file");
        }
        broker
    }

    fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}/0", self.port),
            _ => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
        }
    }

    /// Starts the broker (again: same port, RabbitMQ's same node and data).
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log()).expect("a log file");
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut cmd = Command::new("redis-server");
                cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]);
                cmd
            }
            _ => {
                let mut cmd = Command::new(format!("{RABBIT_BIN}/rabbitmq-server"));
                for (k, _) in std::env::vars() {
                    if k.starts_with("RABBITMQ_") {
                        cmd.env_remove(k);
                    }
                }
                let d = |p: &str| self.dir.join(p).into_os_string();
                cmd.env("HOME", d("home"))
                    .env("RABBITMQ_NODENAME", &self.name)
                    .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                    .env("RABBITMQ_NODE_PORT", self.port.to_string())
                    .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
                    .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
                    .env("RABBITMQ_LOG_BASE", d("log"))
                    .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
                    .env("RABBITMQ_CONFIG_FILE", d("rabbitmq"))
                    .env("RABBITMQ_ADVANCED_CONFIG_FILE", d("advanced.config"))
                    .env("RABBITMQ_PID_FILE", d("node.pid"));
                cmd
            }
        };
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?} ({e}); install redis-server and rabbitmq-server", cmd.get_program()));
        self.child = Some(child);
    }

    fn log(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    /// Panics (with the log) when the broker process exited by itself.
    fn assert_alive(&mut self) {
        if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            panic!("the private broker exited ({status}):\n{}", &log[log.len().saturating_sub(2000)..]);
        }
    }

    /// SIGKILL to the broker's whole process tree (RabbitMQ's
    /// `erl_child_setup` and `inet_gethost` leave its process group).
    fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let tree = process_tree(child.id());
        let _ = Command::new("kill").arg("-KILL").args(tree.iter().map(u32::to_string)).stderr(Stdio::null()).status();
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nobody listens on, outside the ephemeral range (so that a
/// client's own connections cannot take it while the broker is down) and
/// rabbitmqctl's 35672-35682.
fn free_port() -> u16 {
    loop {
        let port = fastrand::u16(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `root` and all its descendants, from /proc.
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok()) else { continue };
        children.entry(ppid).or_default().push(pid);
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children.get(&tree[i]).into_iter().flatten());
        i += 1;
    }
    tree
}

// ---------------------------------------------------------------------------
// Every promise, run against every adapter.
// ---------------------------------------------------------------------------

/// `every bus`: each promise, run against each adapter; `(amqp: ATTR)` puts
/// an attribute on the RabbitMQ instance only (a known bug is `ignore`d with
/// its reason, never left out). `brokers`: the promises that need a broker
/// to lose, run against Redis and RabbitMQ; `(both: ATTR)` for both.
macro_rules! contract {
    (
        every bus: [$($promise:ident $((amqp: $amqp_attr:meta))?),* $(,)?],
        brokers: [$($broker_promise:ident $((both: $broker_attr:meta))?),* $(,)?] $(,)?
    ) => {
        /// The embedded bus (a single node; no broker to lose).
        mod memory {
            $( #[tokio::test] async fn $promise() { super::$promise(super::Kind::Memory).await } )*
        }
        /// Redis pub/sub.
        mod redis {
            $( #[tokio::test] async fn $promise() { super::$promise(super::Kind::Redis).await } )*
            $( $(#[$broker_attr])? #[tokio::test] async fn $broker_promise() { super::$broker_promise(super::Kind::Redis).await } )*
        }
        /// A RabbitMQ topic exchange.
        mod amqp {
            $( $(#[$amqp_attr])? #[tokio::test] async fn $promise() { super::$promise(super::Kind::Amqp).await } )*
            $( $(#[$broker_attr])? #[tokio::test] async fn $broker_promise() { super::$broker_promise(super::Kind::Amqp).await } )*
        }
    };
}

contract! {
    every bus: [
        ready_means_subscribed,
        accepted_needs_no_subscriber,
        subscribed_fails_without_subscriber,
        subscribed_succeeds_with_subscriber,
        delivered_once_to_every_interested_node,
        ordering,
        interest_applied_means_routed,
        removing_an_interest_keeps_the_others,
        publish_batch_answers_each_in_order,
        concurrent_subscribed_publishes_answer_each,
        envelope_round_trip,
        backpressure_stops_reading,
        store_order_and_bounds,
        store_keeps_no_session_filtered_events,
        store_retention,
    ],
    brokers: [
        outage,
        publish_only_client_recovers,
    ],
}
