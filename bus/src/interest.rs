//! What this node needs from the bus: the desired set of (realm, policy,
//! pattern) interests, versioned, so a broker adapter can reconcile its
//! subscriptions or bindings with it (after every change and after every
//! reconnect) and sessions can wait until their interest is in force.
//!
//! This is state, not a queue: however many changes arrive while the
//! adapter is busy, it applies the latest desired set once.

use std::collections::HashSet;
use std::sync::Mutex;

use telegraphy_wamp::MatchPolicy;
use tokio::sync::{watch, Notify};

/// One interest: events of `realm` whose topic matches `pattern` under `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Interest {
    /// The realm.
    pub realm: String,
    /// How the pattern matches.
    pub policy: MatchPolicy,
    /// The subscription URI.
    pub pattern: String,
}

/// A version of the desired interest set; [`Interests::wait_applied`]
/// resolves once the broker has it.
pub type Ticket = u64;

struct Desired {
    version: Ticket,
    set: HashSet<Interest>,
}

/// The desired interests and how far the adapter has applied them.
pub struct Interests {
    desired: Mutex<Desired>,
    changed: Notify,
    applied: watch::Sender<Ticket>,
    connected: watch::Sender<bool>,
}

impl Default for Interests {
    fn default() -> Self {
        Interests {
            desired: Mutex::new(Desired { version: 0, set: HashSet::new() }),
            changed: Notify::new(),
            applied: watch::channel(0).0,
            connected: watch::channel(false).0,
        }
    }
}

impl Interests {
    /// Adds an interest; returns the version that includes it.
    pub fn add(&self, interest: Interest) -> Ticket {
        let mut d = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        d.set.insert(interest);
        d.version += 1;
        self.changed.notify_one();
        d.version
    }

    /// Removes an interest.
    pub fn remove(&self, interest: &Interest) {
        let mut d = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        if d.set.remove(interest) {
            d.version += 1;
            self.changed.notify_one();
        }
    }

    /// The current version (cheap: no copy of the set).
    pub fn version(&self) -> Ticket {
        self.desired.lock().unwrap_or_else(|e| e.into_inner()).version
    }

    /// The current version and desired set.
    pub fn snapshot(&self) -> (Ticket, HashSet<Interest>) {
        let d = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        (d.version, d.set.clone())
    }

    /// Resolves after the desired set changed (a change made before the
    /// call and not yet seen also counts).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The adapter applied everything up to `version`.
    pub fn mark_applied(&self, version: Ticket) {
        self.applied.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }

    /// The adapter's connection state (wakes waiters when it drops).
    pub fn set_connected(&self, up: bool) {
        self.connected.send_replace(up);
    }

    /// Whether the adapter is connected.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Resolves once `ticket` is applied, or at once while the adapter is
    /// disconnected (it re-applies everything on reconnect).
    pub async fn wait_applied(&self, ticket: Ticket) {
        let mut applied = self.applied.subscribe();
        let mut connected = self.connected.subscribe();
        tokio::select! {
            _ = applied.wait_for(|v| *v >= ticket) => {}
            _ = connected.wait_for(|up| !*up) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(p: &str) -> Interest {
        Interest { realm: "r".into(), policy: MatchPolicy::Exact, pattern: p.into() }
    }

    #[tokio::test]
    async fn tickets_resolve_when_applied() {
        let i = Interests::default();
        i.set_connected(true);
        let t = i.add(interest("a"));
        let (v, set) = i.snapshot();
        assert_eq!((v, set.len()), (t, 1));
        let waiter = i.wait_applied(t);
        i.mark_applied(t);
        waiter.await;
        i.remove(&interest("a"));
        assert!(i.snapshot().1.is_empty());
        i.changed().await; // a change happened since the last wait: no hang
    }

    #[tokio::test]
    async fn waiting_while_disconnected_does_not_hang() {
        let i = Interests::default();
        let t = i.add(interest("a"));
        i.wait_applied(t).await;
    }
}
