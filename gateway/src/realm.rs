//! A realm on this node and what it owns: the broker role (its
//! subscriptions and fan-out), the dealer role (registrations and calls in
//! flight) and the event store. The realm's session registry will sit
//! beside them; a session reaches them all through its [`Realm`].

use std::collections::HashMap;
use std::sync::Arc;

use telegraphy_bus::{Bus, Envelope, EventStore};
use telegraphy_wamp::{Dict, Value};

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::dealer::{Dealer, DealerLimits};
use crate::members::Members;
use crate::metrics::Metrics;
use crate::outbox::Flush;

/// One realm: its name and its roles.
pub(crate) struct Realm {
    /// `WELCOME.Details.roles`, built once.
    welcome_roles: Value,
    /// The realm's URI.
    pub name: String,
    /// Publish/subscribe.
    pub broker: Broker,
    /// Remote procedure calls.
    pub dealer: Dealer,
    /// Recent and retained events (when the bus keeps them).
    pub store: Option<Arc<dyn EventStore>>,
    /// Its sessions, on this node and the others (the session meta API),
    /// and the other nodes' subscriptions.
    pub members: Members,
    /// The topics whose presence sessions of this node follow.
    pub presence: crate::presence::Watch,
}

/// The WAMP features this router's broker announces in WELCOME.
const BROKER_FEATURES: &[&str] = &[
    "pattern_based_subscription",
    "publisher_exclusion",
    "publisher_identification",
    "subscriber_blackwhite_listing",
    "session_meta_api",
    "subscription_meta_api",
];

/// What the broker announces on top when an event store is in place.
const STORE_FEATURES: &[&str] = &["event_history", "event_retention"];

/// The WAMP features this router's dealer announces in WELCOME.
const DEALER_FEATURES: &[&str] = &[
    "progressive_call_results",
    "call_canceling",
    "call_timeout",
    "caller_identification",
    "shared_registration",
    "pattern_based_registration",
    "registration_revocation",
    "session_meta_api",
    "testament_meta_api",
];

impl Realm {
    /// A realm with empty registries.
    pub(crate) fn new(
        name: &str,
        bus: Arc<dyn Bus>,
        store: Option<Arc<dyn EventStore>>,
        metrics: Arc<Metrics>,
        node_id: u64,
        limits: DealerLimits,
        cluster: Option<Arc<Cluster>>,
    ) -> Realm {
        let welcome_roles = Value::Dict(roles(store.is_some()));
        Realm {
            name: name.to_string(),
            broker: Broker::new(name, bus, metrics.clone(), node_id),
            dealer: Dealer::new(name, metrics, limits, cluster),
            store,
            welcome_roles,
            members: Members::default(),
            presence: Default::default(),
        }
    }

    /// `WELCOME.Details.roles`: each role this realm serves, with its features.
    pub(crate) fn welcome_roles(&self) -> &Value {
        &self.welcome_roles
    }

    /// Hands an event from the bus to the realm's subscribers; returns the
    /// number of EVENT messages sent (some wait in `flush` for the end of
    /// the batch).
    pub(crate) fn dispatch(&self, event: &Envelope, flush: &mut Flush) -> usize {
        self.broker.dispatch(event, flush)
    }
}

/// The roles a realm announces, with their features (`store`: an event
/// store is in place).
fn roles(store: bool) -> Dict {
    let features = |names: &[&[&str]]| {
        let features = names.iter().flat_map(|n| n.iter()).map(|n| (n.to_string(), Value::Bool(true))).collect::<Dict>();
        Value::Dict(Dict::from_iter([("features".to_string(), Value::Dict(features))]))
    };
    let mut roles = Dict::new();
    let broker = if store { features(&[BROKER_FEATURES, STORE_FEATURES]) } else { features(&[BROKER_FEATURES]) };
    roles.insert("broker".into(), broker);
    roles.insert("dealer".into(), features(&[DEALER_FEATURES]));
    roles
}

/// Every realm this node serves, by name (fixed at startup).
pub(crate) struct Realms(HashMap<String, Arc<Realm>>);

impl Realms {
    /// The realms of the configuration.
    pub(crate) fn new<'a>(
        names: impl IntoIterator<Item = &'a String>,
        bus: &Arc<dyn Bus>,
        store: Option<&Arc<dyn EventStore>>,
        metrics: &Arc<Metrics>,
        node_id: u64,
        limits: DealerLimits,
        cluster: Option<&Arc<Cluster>>,
    ) -> Realms {
        Realms(
            names
                .into_iter()
                .map(|n| (n.clone(), Arc::new(Realm::new(n, bus.clone(), store.cloned(), metrics.clone(), node_id, limits, cluster.cloned()))))
                .collect(),
        )
    }

    /// Every realm, with its name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Arc<Realm>)> {
        self.0.iter()
    }

    /// The event store the realms share, if any.
    pub(crate) fn store(&self) -> Option<&Arc<dyn EventStore>> {
        self.0.values().next().and_then(|r| r.store.as_ref())
    }

    /// The realm called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Realm>> {
        self.0.get(name)
    }
}
