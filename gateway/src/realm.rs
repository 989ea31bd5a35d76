//! A realm on this node and what it owns: today the broker role (its
//! subscriptions and fan-out). The dealer's registrations, the realm's
//! session registry and its event store sit beside the broker here as they
//! land; a session reaches them all through its [`Realm`].

use std::collections::HashMap;
use std::sync::Arc;

use telegraphy_bus::{Bus, Envelope, EventStore};
use telegraphy_wamp::{Dict, Value};

use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::outbox::Flush;

/// One realm: its name and its roles.
pub(crate) struct Realm {
    /// The realm's URI.
    pub name: String,
    /// Publish/subscribe.
    pub broker: Broker,
    /// Recent and retained events (when the bus keeps them).
    pub store: Option<Arc<dyn EventStore>>,
}

/// The WAMP features this router's broker announces in WELCOME.
const BROKER_FEATURES: &[&str] = &["pattern_based_subscription", "publisher_exclusion", "publisher_identification", "subscriber_blackwhite_listing"];

/// What the broker announces on top when an event store is in place.
const STORE_FEATURES: &[&str] = &["event_history", "event_retention"];

impl Realm {
    /// A realm with empty registries.
    pub(crate) fn new(name: &str, bus: Arc<dyn Bus>, store: Option<Arc<dyn EventStore>>, metrics: Arc<Metrics>, node_id: u64) -> Realm {
        Realm { name: name.to_string(), broker: Broker::new(name, bus, metrics, node_id), store }
    }

    /// `WELCOME.Details.roles`: each role this realm serves, with its features.
    pub(crate) fn welcome_roles(&self) -> Dict {
        let features =
            |names: &[&[&str]]| Value::Dict(names.iter().flat_map(|n| n.iter()).map(|n| (n.to_string(), Value::Bool(true))).collect::<Dict>());
        let mut roles = Dict::new();
        let mut broker = Dict::new();
        match self.store {
            Some(_) => {
                broker.insert("features".into(), features(&[BROKER_FEATURES, STORE_FEATURES]));
                // Event history is read through a meta procedure
                // (`wamp.subscription.get_events`), which the router answers
                // as a dealer; it is the only procedure it answers yet.
                roles.insert("dealer".into(), Value::Dict(Dict::from_iter([("features".to_string(), Value::Dict(Dict::new()))])));
            }
            None => {
                broker.insert("features".into(), features(&[BROKER_FEATURES]));
            }
        }
        roles.insert("broker".into(), Value::Dict(broker));
        roles
    }

    /// Hands an event from the bus to the realm's subscribers; returns the
    /// number of EVENT messages sent (some wait in `flush` for the end of
    /// the batch).
    pub(crate) fn dispatch(&self, event: &Envelope, flush: &mut Flush) -> usize {
        self.broker.dispatch(event, flush)
    }
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
    ) -> Realms {
        Realms(names.into_iter().map(|n| (n.clone(), Arc::new(Realm::new(n, bus.clone(), store.cloned(), metrics.clone(), node_id)))).collect())
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
