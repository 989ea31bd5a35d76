//! One event on the bus, with what every node needs to route it.

use telegraphy_wamp::{Dict, Id, Value};

/// An event as it travels from a publisher to every node.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// The realm the event belongs to.
    pub realm: String,
    /// Publication id, unique across the cluster (random in `1..=2^53`).
    pub publication: Id,
    /// The concrete topic URI.
    pub topic: String,
    /// Positional payload.
    pub args: Vec<Value>,
    /// Keyword payload.
    pub kwargs: Dict,
    /// Which subscribers may receive it.
    pub filter: Filter,
    /// Who published it, when a WAMP session did (for `exclude_me` and
    /// `disclose_me`); `None` for HTTP and CLI publishes.
    pub publisher: Option<Publisher>,
    /// Publish time, microseconds since the Unix epoch (for latency figures).
    pub published_at_us: u64,
}

/// The publishing session, as other nodes need to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct Publisher {
    /// Id of the node the session is on.
    pub node: u64,
    /// The session id.
    pub session: Id,
    /// The session's authid.
    pub authid: String,
    /// The session's authrole.
    pub authrole: String,
    /// Exclude the publisher from receiving its own event (`exclude_me`).
    pub exclude_me: bool,
    /// Disclose the publisher to subscribers (`disclose_me`).
    pub disclose_me: bool,
}

/// Subscriber black- and white-listing (WAMP advanced profile). A subscriber
/// receives the event when it is in no exclude list and, for each eligible
/// list that is set, in that list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Session ids that must not receive the event.
    pub exclude: Vec<Id>,
    /// When set, only these session ids may receive it.
    pub eligible: Option<Vec<Id>>,
    /// Authids that must not receive the event.
    pub exclude_authid: Vec<String>,
    /// When set, only these authids may receive it.
    pub eligible_authid: Option<Vec<String>>,
    /// Authroles that must not receive the event.
    pub exclude_authrole: Vec<String>,
    /// When set, only these authroles may receive it.
    pub eligible_authrole: Option<Vec<String>>,
}

impl Filter {
    /// True when the filter lets everyone through (the common case, which
    /// the hub uses to skip per-subscriber checks).
    pub fn is_open(&self) -> bool {
        self.exclude.is_empty()
            && self.eligible.is_none()
            && self.exclude_authid.is_empty()
            && self.eligible_authid.is_none()
            && self.exclude_authrole.is_empty()
            && self.eligible_authrole.is_none()
    }

    /// Whether a subscriber with this identity may receive the event.
    pub fn admits(&self, session: Id, authid: &str, authrole: &str) -> bool {
        fn listed(list: &[String], s: &str) -> bool {
            list.iter().any(|x| x == s)
        }
        !self.exclude.contains(&session)
            && self.eligible.as_ref().is_none_or(|l| l.contains(&session))
            && !listed(&self.exclude_authid, authid)
            && self.eligible_authid.as_ref().is_none_or(|l| listed(l, authid))
            && !listed(&self.exclude_authrole, authrole)
            && self.eligible_authrole.as_ref().is_none_or(|l| listed(l, authrole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_lists() {
        let open = Filter::default();
        assert!(open.is_open() && open.admits(1, "a", "r"));
        let f = Filter { exclude: vec![1], ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(2, "a", "r"));
        let f = Filter { eligible: Some(vec![2]), ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(2, "a", "r"));
        let f = Filter { eligible: Some(vec![]), ..Default::default() };
        assert!(!f.admits(2, "a", "r"), "an empty eligible list admits nobody");
        let f = Filter { exclude_authid: vec!["a".into()], ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(1, "b", "r"));
        let f = Filter { eligible_authrole: Some(vec!["admin".into()]), ..Default::default() };
        assert!(!f.admits(1, "a", "r") && f.admits(1, "a", "admin"));
        let f = Filter { eligible: Some(vec![1]), exclude: vec![1], ..Default::default() };
        assert!(!f.admits(1, "a", "r"), "exclusion wins over eligibility");
    }
}
