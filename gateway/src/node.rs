//! What every connection on this node shares: the validated configuration,
//! the realms, the bus, metrics, admission (connection slots and limits)
//! and the lifecycle (draining, shutdown signal); and the bus dispatcher
//! that hands each event to its realm.

use std::sync::Arc;

use telegraphy_bus::inbound::BusSessions;
use telegraphy_bus::{Bus, Envelope, EventStore, Position};
use telegraphy_wamp::{Id, MatchPolicy, UriRules, MAX_ID};
use tokio::sync::mpsc;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::continuity::{Check, Continuity};
use crate::lifecycle::Lifecycle;
use crate::members::{SubscriptionChange, SubscriptionOp};
use crate::metrics::Metrics;
use crate::outbox::{Flush, WriteShards};
use crate::realm::Realms;

/// The state of one gateway node.
pub struct Node {
    /// The validated configuration.
    pub config: Config,
    /// Random id of this node, carried in envelopes for `exclude_me`.
    pub id: u64,
    /// The realms this node serves.
    pub(crate) realms: Realms,
    /// Where events go.
    pub bus: Arc<dyn Bus>,
    /// Metric handles.
    pub metrics: Arc<Metrics>,
    /// URI rules, from the config.
    pub uri_rules: UriRules,
    /// API keys accepted by `POST /publish` and `GET /presence`, with their rights.
    pub(crate) api_keys: crate::publish::ApiKeys,
    /// Verifies credentials and resolves roles.
    pub auth: Authenticator,
    /// Every connection of the public listener, from accept to close
    /// (`limits.max_connections`, unauthenticated ones shed first; pending
    /// handshakes; WebSockets per address).
    pub(crate) admission: Arc<Admission>,
    /// Draining, the shutdown signal, the session tracker.
    pub(crate) lifecycle: Lifecycle,
    /// The bus queue toward the dispatcher, to report its depth.
    bus_queue: mpsc::WeakSender<Envelope>,
    /// The event store, when live delivery can miss events it kept (to
    /// fill gaps: Redis; see `EventStore::live_path_may_skip`).
    store: Option<Arc<dyn EventStore>>,
    /// The bus adapter's consuming sessions (`Inbound::sessions`).
    bus_sessions: Arc<BusSessions>,
    /// Procedures the web-app serves over HTTP (`[[rpc.http]]`).
    pub(crate) http_callees: Option<Arc<crate::http_callee::HttpCallees>>,
    /// The other gateway nodes on the bus (none on the memory bus).
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// What a node takes from its bus.
pub struct NodeBus {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The event store beside it, if the bus has one.
    pub store: Option<Arc<dyn EventStore>>,
    /// The queue the bus feeds the dispatcher through (to report its depth).
    pub queue: mpsc::WeakSender<Envelope>,
    /// The bus adapter's consuming sessions (`Inbound::sessions`).
    pub sessions: Arc<BusSessions>,
}

impl Node {
    /// Builds a node around a bus.
    pub fn new(id: u64, config: Config, auth: Authenticator, bus: NodeBus, metrics: Arc<Metrics>) -> Arc<Node> {
        let NodeBus { bus, store, queue: bus_queue, sessions: bus_sessions } = bus;
        metrics.max_connections.set(config.limits.max_connections as i64);
        let limits = crate::dealer::DealerLimits {
            max_calls_per_session: config.limits.max_calls_per_session,
            max_registrations_per_session: config.limits.max_registrations_per_session,
        };
        // The memory bus is one node: nobody to talk to.
        let cluster = (bus.kind() != "memory").then(|| Cluster::start(id, bus.clone(), bus_sessions.clone()));
        metrics.cluster_nodes.set(1);
        let realms = Realms::new(&config.realms, &bus, store.as_ref(), &metrics, id, limits, cluster.as_ref());
        Arc::new(Node {
            http_callees: crate::http_callee::HttpCallees::from_config(&config.rpc, config.limits.max_message_size),
            uri_rules: config.uri_rules.into(),
            api_keys: crate::publish::ApiKeys::from_config(&config),
            auth,
            admission: Admission::behind(
                &config.limits,
                // Checked by `Config::validate`.
                crate::proxy::TrustedProxies::new(&config.proxies.trusted, config.proxies.header, config.proxies.proxy_protocol).unwrap_or_default(),
                metrics.clone(),
            ),
            config,
            id,
            realms,
            bus,
            metrics,
            lifecycle: Lifecycle::default(),
            bus_queue,
            store: store.filter(|s| s.live_path_may_skip()),
            bus_sessions,
            cluster,
        })
    }

    /// Publishes a meta event of `realm` (`wamp.session.on_join`, …) on the
    /// bus, as the router: every node's subscribers with the right get it.
    pub(crate) fn publish_meta(&self, realm: &str, topic: &str, args: Vec<telegraphy_wamp::Value>) {
        self.publish_as_router(realm, topic, args, Default::default());
    }

    /// Publishes a departed session's testaments (`detached` ones first).
    pub(crate) fn publish_testaments(&self, realm: &str, member: &crate::members::Member) {
        for t in member.last_words() {
            self.publish_as_router(realm, &t.topic, t.args.clone(), t.kwargs.clone());
        }
    }

    fn publish_as_router(&self, realm: &str, topic: &str, args: Vec<telegraphy_wamp::Value>, kwargs: telegraphy_wamp::Dict) {
        let event = Envelope {
            realm: realm.to_string(),
            publication: random_id(),
            topic: topic.to_string(),
            args,
            kwargs,
            filter: Default::default(),
            publisher: None,
            published_at_us: telegraphy_bus::now_us(),
            retain: false,
            position: None,
        };
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(e) = bus.publish(event, telegraphy_bus::Delivery::Accepted).await {
                tracing::debug!(error = %e, "a session meta event was not published");
            }
        });
    }

    /// Whether any session, here or on another node, subscribes to
    /// `realm`'s session meta events: they are published only then (a
    /// session joining costs nothing extra when nobody listens).
    pub(crate) fn meta_listened(&self, realm: &crate::realm::Realm) -> bool {
        crate::members::listened_here(realm) || self.cluster.as_ref().is_some_and(|c| c.listened_elsewhere(&realm.name))
    }

    /// A session joined `realm`: recorded (and told to the other nodes),
    /// and announced with `wamp.session.on_join` when someone listens.
    pub(crate) fn member_joined(&self, realm: &crate::realm::Realm, member: crate::members::Member, handle: Arc<crate::broker::SessionHandle>) {
        let details = self.meta_listened(realm).then(|| member.details());
        match &self.cluster {
            Some(cluster) => cluster.member_joined(realm, member, handle),
            None => realm.members.join(member, handle),
        }
        if let Some(details) = details {
            self.publish_meta(&realm.name, crate::members::ON_JOIN, vec![telegraphy_wamp::Value::Dict(details)]);
        }
    }

    /// A session left `realm`: forgotten (here and on the other nodes), and
    /// announced with `wamp.session.on_leave`.
    pub(crate) fn member_left(&self, realm: &crate::realm::Realm, session: Id) {
        let left = match &self.cluster {
            Some(cluster) => cluster.member_left(realm, session),
            None => realm.members.leave(session),
        };
        if let Some(member) = left {
            self.publish_testaments(&realm.name, &member);
            if self.meta_listened(realm) {
                self.publish_meta(&realm.name, crate::members::ON_LEAVE, member.on_leave());
            }
        }
    }

    /// Changes this node's member `session` of `realm` (its testaments),
    /// here and, with the next delta, on the other nodes.
    pub(crate) fn member_changed(&self, realm: &crate::realm::Realm, session: Id, change: impl FnOnce(&mut crate::members::Member)) -> bool {
        match &self.cluster {
            Some(cluster) => cluster.member_changed(realm, session, change),
            None => realm.members.update(session, change).is_some(),
        }
    }

    /// A session of this node subscribed to subscription `sub` of `realm`
    /// (a subscription it did not hold): the other nodes hear of it, and
    /// this node's listeners get the subscription meta events.
    pub(crate) fn subscribed(&self, realm: &crate::realm::Realm, session: Id, sub: &crate::broker::Subscribed, policy: MatchPolicy, uri: &str) {
        if telegraphy_bus::is_reserved_topic(uri) {
            // The router's own topics are not in the directory.
            if crate::members::is_subscription_event(uri) {
                realm.members.listener_added();
            }
            return;
        }
        if policy == MatchPolicy::Exact {
            realm.members.touched();
        }
        let (cluster, listened) = (self.cluster.as_ref(), realm.members.listened());
        if cluster.is_none() && !listened {
            return;
        }
        let op = SubscriptionOp { session, id: sub.id, policy, uri: Arc::from(uri), created_us: sub.created_us };
        if let Some(cluster) = cluster {
            cluster.subscription_changed(&realm.name, session, sub.id, Some(op.clone()));
        }
        if listened {
            let created = realm.broker.subscribers_here(sub.id) + realm.members.subscribers_away(sub.id) == 1;
            let SubscriptionOp { session, id, policy, uri, created_us } = op;
            self.subscriptions_changed(realm, vec![SubscriptionChange::Subscribed { session, id, policy, uri, created_us, created }]);
        }
    }

    /// A session of this node left subscription `id` of `realm` (it held it).
    pub(crate) fn unsubscribed(&self, realm: &crate::realm::Realm, session: Id, id: Id) {
        let Some((policy, uri)) = realm.broker.leave(session, id) else { return };
        if telegraphy_bus::is_reserved_topic(&uri) {
            if crate::members::is_subscription_event(&uri) {
                realm.members.listener_removed();
            }
            return;
        }
        if policy == MatchPolicy::Exact {
            realm.members.touched();
        }
        if let Some(cluster) = &self.cluster {
            cluster.subscription_changed(&realm.name, session, id, None);
        }
        if realm.members.listened() {
            let deleted = realm.broker.subscribers_here(id) + realm.members.subscribers_away(id) == 0;
            self.subscriptions_changed(realm, vec![SubscriptionChange::Unsubscribed { session, id, policy, uri, deleted }]);
        }
    }

    /// Tells this node's listeners of subscription changes (the
    /// subscription meta events); each listener hears only of subscriptions
    /// its role could make itself.
    pub(crate) fn subscriptions_changed(&self, realm: &crate::realm::Realm, changes: Vec<SubscriptionChange>) {
        use crate::members::{ON_CREATE, ON_DELETE, ON_SUBSCRIBE, ON_UNSUBSCRIBE};
        use telegraphy_wamp::Value;
        if changes.is_empty() || !realm.members.listened() {
            return;
        }
        let broker = &realm.broker;
        for change in changes {
            match change {
                SubscriptionChange::Subscribed { session, id, policy, uri, created_us, created } => {
                    let about = Some((policy, &*uri));
                    if created {
                        let details = crate::members::subscription_details(id, policy, &uri, created_us);
                        broker.dispatch_router_event(ON_CREATE, vec![Value::UInt(session), Value::Dict(details)], Default::default(), about);
                    }
                    broker.dispatch_router_event(ON_SUBSCRIBE, vec![Value::UInt(session), Value::UInt(id)], Default::default(), about);
                }
                SubscriptionChange::Unsubscribed { session, id, policy, uri, deleted } => {
                    let about = Some((policy, &*uri));
                    broker.dispatch_router_event(ON_UNSUBSCRIBE, vec![Value::UInt(session), Value::UInt(id)], Default::default(), about);
                    if deleted {
                        broker.dispatch_router_event(ON_DELETE, vec![Value::UInt(session), Value::UInt(id)], Default::default(), about);
                    }
                }
            }
        }
    }

    /// Whether the node should receive traffic.
    pub(crate) fn is_ready(&self) -> bool {
        !self.lifecycle.is_draining() && self.bus.is_ready()
    }

    /// What this node's own event store holds: (events, bytes).
    pub(crate) fn store_held(&self) -> Option<(u64, u64)> {
        self.realms.store().and_then(|s| s.held())
    }

    /// Events waiting in the bus queue for fan-out.
    pub(crate) fn bus_queue_depth(&self) -> usize {
        self.bus_queue.upgrade().map(|tx| tx.max_capacity() - tx.capacity()).unwrap_or(0)
    }

    /// Takes events from the bus and fans them out until the bus closes or
    /// the node shuts down.
    pub(crate) async fn run_dispatcher(self: Arc<Self>, mut events: mpsc::Receiver<Envelope>) {
        let mut batch = Vec::with_capacity(64);
        let mut continuity = Continuity::default();
        let mut sessions_seen = self.bus_sessions.count();
        // Large fan-outs are written by these, on every core; they stop
        // when the dispatcher ends.
        let shards = WriteShards::start();
        let mut flush = Flush::with_shards(shards.clone());
        loop {
            batch.clear();
            tokio::select! {
                n = events.recv_many(&mut batch, 64) => if n == 0 { return },
                // The bus reconnected: a quiet topic must not wait for its
                // next event to get what it missed.
                _ = self.bus_sessions.changed(), if self.store.is_some() => {}
            }
            if let Some(store) = &self.store {
                let sessions = self.bus_sessions.count();
                if sessions != sessions_seen {
                    sessions_seen = sessions;
                    self.catch_up(&**store, &mut continuity, &mut flush).await;
                }
            }
            // Fan-outs leave their frames queued until the batch is done: a
            // session then gets the batch's events in one write.
            let mut control = 0;
            for event in &batch {
                if let (Some(store), Some(position)) = (&self.store, event.position) {
                    match continuity.check(event, position) {
                        Check::Seen => continue,
                        Check::Gap { after } => {
                            self.fill(&**store, &mut continuity, &mut flush, &event.realm, &event.topic, after, Some(position)).await;
                        }
                        Check::Next => {}
                    }
                    continuity.delivered(&event.realm, &event.topic, position);
                }
                control += u64::from(self.dispatch(event, &mut flush));
            }
            flush.run();
            self.metrics.events_received.inc_by(batch.len() as u64 - control);
            // Write shards far behind (clients that read slowly): the bus's
            // bounded queue holds what comes meanwhile.
            shards.room().await;
        }
    }

    /// Hands an event to its realm, or a control message to the cluster
    /// (then answers true).
    fn dispatch(&self, event: &Envelope, flush: &mut Flush) -> bool {
        if telegraphy_bus::control::is_control(event) {
            if let Some(cluster) = &self.cluster {
                cluster.receive(self, event);
            }
            return true;
        }
        match self.realms.get(&event.realm) {
            Some(realm) => {
                realm.dispatch(event, flush);
            }
            None => tracing::debug!(realm = %event.realm, "event for a realm this node does not serve; dropped"),
        }
        false
    }

    /// Delivers the kept events of `topic` after `after` (and before
    /// `before`, when given), in order.
    ///
    /// Through the dispatcher's `flush`: the write shards may still be
    /// writing earlier events, which these must not overtake.
    #[allow(clippy::too_many_arguments)]
    async fn fill(
        &self,
        store: &dyn EventStore,
        continuity: &mut Continuity,
        flush: &mut Flush,
        realm: &str,
        topic: &str,
        after: Position,
        before: Option<Position>,
    ) {
        // What this batch left for the shards goes first.
        flush.run();
        let missing = before.map_or(self.config.history.max_replay, |b| (b.offset - after.offset - 1) as usize);
        let page = match store.read(realm, topic, Some(after), missing.min(self.config.history.max_replay)).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(topic, error = %e, "could not read the events this node missed; its subscribers miss them too");
                return;
            }
        };
        if page.epoch == Some(after.epoch) && page.head < after.offset && before.is_none() {
            // The store lost its newest events (a failover to a replica that
            // lagged): its next offsets are new events, not copies.
            tracing::warn!(
                topic,
                delivered = after.offset,
                kept = page.head,
                "the event store's log of this topic ends before what this node delivered (a failover lost its newest events); \
                 counting from the store's end again"
            );
            continuity.rewind(realm, topic, Position { epoch: after.epoch, offset: page.head });
            return;
        }
        let mut filled = 0;
        for e in page.events.iter().filter(|e| e.position.is_some_and(|p| before.is_none_or(|b| p.offset < b.offset))) {
            let Some(p) = e.position else { continue };
            if continuity.check(e, p) == Check::Seen {
                continue;
            }
            continuity.delivered(realm, topic, p);
            self.dispatch(e, flush);
            filled += 1;
        }
        flush.run();
        if filled > 0 {
            self.metrics.history_gap_fills.inc();
            self.metrics.history_replayed.inc_by(filled);
            tracing::info!(topic, events = filled, "delivered events this node had missed on the bus (read from the event store)");
        }
    }

    /// After the bus reconnected: every topic delivered before gets what
    /// was published while the node was away.
    async fn catch_up(&self, store: &dyn EventStore, continuity: &mut Continuity, flush: &mut Flush) {
        for (realm, topic, last) in continuity.remembered() {
            self.fill(store, continuity, flush, &realm, &topic, last, None).await;
        }
    }
}

/// A random WAMP global-scope id in `1..=2^53`, for publications (which
/// gate nothing; fast).
pub(crate) fn random_id() -> Id {
    fastrand::u64(1..=MAX_ID)
}

/// A WAMP id in `1..=2^53` from the operating system's cryptographic
/// generator, for session ids: they gate the `eligible`/`exclude` publish
/// options, so they must not be predictable.
pub(crate) fn secure_random_id() -> Id {
    u64::from_le_bytes(secure_random_bytes()) % MAX_ID + 1
}

/// Bytes from the operating system's cryptographic generator.
pub(crate) fn secure_random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The kernel's generator does not fail once the system has booted; if
    // it ever did, there is nothing safe to fall back to.
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
}
