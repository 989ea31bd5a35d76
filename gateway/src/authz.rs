//! Authorization: which topics a session may subscribe and publish to,
//! which procedures it may call and register.
//!
//! A session's rights are its role's patterns (from config), narrowed by the
//! patterns in its token when the token carries any, per action
//! (`subscribe`, `publish`, `call`, `register`). A URI is allowed when it
//! matches a role pattern **and** (if the token lists patterns for that
//! action) a token pattern.
//!
//! Pattern syntax (roles and token claims alike): see
//! [`telegraphy_bus::pattern`].
//!
//! A SUBSCRIBE is checked against the subscription's own pattern: refused
//! when no allowed topic can match it, accepted **fully** when every topic
//! it can match is allowed, and accepted **partially** otherwise — then each
//! event is checked for that session before it is queued, so a prefix or
//! wildcard subscription never leaks a forbidden topic.

use telegraphy_bus::is_reserved_topic;
pub(crate) use telegraphy_bus::pattern::{Pattern, PatternSet};
use telegraphy_wamp::MatchPolicy;

/// Whether every topic the subscription can match matches `pattern`.
fn covers(pattern: &Pattern, policy: MatchPolicy, sub: &str) -> bool {
    match (pattern, policy) {
        (Pattern::All, _) => true,
        (p, MatchPolicy::Exact) => p.matches(sub),
        (Pattern::Prefix(p), MatchPolicy::Prefix) => sub.starts_with(p.as_str()),
        (Pattern::Wildcard(w), MatchPolicy::Wildcard) => {
            let (wc, sc): (Vec<&str>, Vec<&str>) = (w.split('.').collect(), sub.split('.').collect());
            wc.len() == sc.len() && wc.iter().zip(&sc).all(|(w, s)| w.is_empty() || (!s.is_empty() && w == s))
        }
        (Pattern::Prefix(p), MatchPolicy::Wildcard) => {
            // Covered when the wildcard's fixed leading part already starts with the prefix.
            let fixed: String = sub.split('.').take_while(|c| !c.is_empty()).collect::<Vec<_>>().join(".");
            !fixed.is_empty() && fixed.len() < sub.len() && format!("{fixed}.").starts_with(p.as_str())
        }
        _ => false,
    }
}

/// Whether some topic could match both `pattern` and the subscription
/// (conservative: "maybe" counts as yes; events are checked anyway).
fn overlaps(pattern: &Pattern, policy: MatchPolicy, sub: &str) -> bool {
    match (pattern, policy) {
        (Pattern::All, _) => true,
        (p, MatchPolicy::Exact) => p.matches(sub),
        (Pattern::Exact(t), policy) => policy.matches(sub, t),
        (Pattern::Prefix(p), MatchPolicy::Prefix) => p.starts_with(sub) || sub.starts_with(p.as_str()),
        (Pattern::Prefix(p), MatchPolicy::Wildcard) => wildcard_meets_prefix(sub, p),
        (Pattern::Wildcard(w), MatchPolicy::Prefix) => wildcard_meets_prefix(w, sub),
        (Pattern::Wildcard(a), MatchPolicy::Wildcard) => {
            let (a, b): (Vec<&str>, Vec<&str>) = (a.split('.').collect(), sub.split('.').collect());
            a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x.is_empty() || y.is_empty() || x == y)
        }
    }
}

/// Whether some topic matches the wildcard `w` and starts with `prefix`.
fn wildcard_meets_prefix(w: &str, prefix: &str) -> bool {
    let wc: Vec<&str> = w.split('.').collect();
    let pc: Vec<&str> = prefix.split('.').collect();
    if pc.len() > wc.len() {
        return false;
    }
    let last = pc.len() - 1;
    pc.iter().zip(&wc).enumerate().all(|(i, (p, w))| {
        if i < last {
            // Whole components: a wildcard slot takes any non-empty one.
            !p.is_empty() && (w.is_empty() || p == w)
        } else {
            // The prefix may end inside this component.
            w.is_empty() || w.starts_with(p)
        }
    })
}

/// Decides a SUBSCRIBE against a set of patterns.
fn decide(set: &PatternSet, policy: MatchPolicy, sub: &str) -> Decision {
    if set.0.iter().any(|p| covers(p, policy, sub)) {
        Decision::Full
    } else if set.0.iter().any(|p| overlaps(p, policy, sub)) {
        Decision::Partial
    } else {
        Decision::Denied
    }
}

/// The outcome of checking a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No allowed topic can match the subscription.
    Denied,
    /// Some can: each event must be checked for this session.
    Partial,
    /// Every topic it can match is allowed.
    Full,
}

impl Decision {
    fn and(self, other: Decision) -> Decision {
        match (self, other) {
            (Decision::Denied, _) | (_, Decision::Denied) => Decision::Denied,
            (Decision::Full, Decision::Full) => Decision::Full,
            _ => Decision::Partial,
        }
    }
}

/// The URIs one action is allowed on: the role's patterns, narrowed by the
/// token's when the token has the claim.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Allowed {
    role: PatternSet,
    token: Option<PatternSet>,
}

impl Allowed {
    pub(crate) fn new(role: PatternSet, token: Option<PatternSet>) -> Allowed {
        Allowed { role, token }
    }

    /// Whether the concrete URI is allowed. The router's own URIs (`wamp.`)
    /// need a role pattern that names them: `*` does not reach them.
    fn matches(&self, uri: &str) -> bool {
        let role = if is_reserved_topic(uri) { self.role.names(uri) } else { self.role.matches(uri) };
        role && self.token.as_ref().is_none_or(|t| t.matches(uri))
    }

    /// Decides a pattern (a subscription's or a registration's). Under
    /// `wamp.` only exact subscriptions the role names are allowed (meta
    /// events reach exact subscriptions only).
    fn decide(&self, policy: MatchPolicy, pattern: &str) -> Decision {
        if is_reserved_topic(pattern) {
            return if policy == MatchPolicy::Exact && self.matches(pattern) { Decision::Full } else { Decision::Denied };
        }
        let role = decide(&self.role, policy, pattern);
        match &self.token {
            Some(t) => role.and(decide(t, policy, pattern)),
            None => role,
        }
    }
}

/// Each action's patterns (a role's, or a token's claims).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Actions<P> {
    pub subscribe: P,
    pub publish: P,
    pub call: P,
    pub register: P,
}

/// What one session may do.
#[derive(Debug, Clone, PartialEq)]
pub struct Permissions {
    subscribe: Allowed,
    publish: Allowed,
    call: Allowed,
    register: Allowed,
    /// May use exclude/eligible publish options.
    pub publish_options: bool,
}

impl Permissions {
    /// Rights from a role, narrowed by token claims when present.
    pub(crate) fn new(role: Actions<PatternSet>, token: Actions<Option<PatternSet>>, publish_options: bool) -> Permissions {
        Permissions {
            subscribe: Allowed::new(role.subscribe, token.subscribe),
            publish: Allowed::new(role.publish, token.publish),
            call: Allowed::new(role.call, token.call),
            register: Allowed::new(role.register, token.register),
            publish_options,
        }
    }

    /// Checks a SUBSCRIBE.
    pub(crate) fn subscribe(&self, policy: MatchPolicy, sub: &str) -> Decision {
        self.subscribe.decide(policy, sub)
    }

    /// Whether an event on `topic` may reach this session.
    pub(crate) fn may_receive(&self, topic: &str) -> bool {
        self.subscribe.matches(topic)
    }

    /// Whether the session may publish to `topic`.
    pub(crate) fn may_publish(&self, topic: &str) -> bool {
        self.publish.matches(topic)
    }

    /// Whether the session may call `procedure`.
    pub(crate) fn may_call(&self, procedure: &str) -> bool {
        self.call.matches(procedure)
    }

    /// Whether the session may register (policy, pattern): only when every
    /// procedure the registration can match is allowed (a callee never
    /// gets calls it may not serve).
    pub(crate) fn may_register(&self, policy: MatchPolicy, pattern: &str) -> bool {
        self.register.decide(policy, pattern) == Decision::Full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MatchPolicy::*;

    fn set(p: &[&str]) -> PatternSet {
        PatternSet::parse(p).unwrap()
    }

    #[test]
    fn pattern_syntax() {
        assert_eq!(Pattern::parse("*").unwrap(), Pattern::All);
        assert_eq!(Pattern::parse("a.b").unwrap(), Pattern::Exact("a.b".into()));
        assert_eq!(Pattern::parse("a.b.*").unwrap(), Pattern::Prefix("a.b.".into()));
        assert_eq!(Pattern::parse("a.b*").unwrap(), Pattern::Prefix("a.b".into()));
        assert_eq!(Pattern::parse("a..c").unwrap(), Pattern::Wildcard("a..c".into()));
        for bad in ["", "a.*.c", "**", "a b", "a#b", ".*"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn subscribe_decisions() {
        let p = Permissions::new(
            Actions { subscribe: set(&["com.app.public.*", "com.app.user.42", "com..status"]), ..Default::default() },
            Actions::default(),
            false,
        );
        assert_eq!(p.subscribe(Exact, "com.app.public.news"), Decision::Full);
        assert_eq!(p.subscribe(Exact, "com.app.user.42"), Decision::Full);
        assert_eq!(p.subscribe(Exact, "com.app.user.43"), Decision::Denied);
        assert_eq!(p.subscribe(Prefix, "com.app.public.n"), Decision::Full);
        // Overlaps allowed and forbidden topics: accepted, checked per event.
        assert_eq!(p.subscribe(Prefix, "com.app"), Decision::Partial);
        assert_eq!(p.subscribe(Prefix, "com.app.user"), Decision::Partial);
        assert_eq!(p.subscribe(Prefix, "org.other"), Decision::Denied);
        assert_eq!(p.subscribe(Wildcard, "com.x.status"), Decision::Full);
        assert_eq!(p.subscribe(Wildcard, "com..status"), Decision::Full);
        assert_eq!(p.subscribe(Wildcard, "com.app.public."), Decision::Full);
        assert_eq!(p.subscribe(Wildcard, "com.app.."), Decision::Partial);
        assert_eq!(p.subscribe(Wildcard, "org..status"), Decision::Denied);
        assert_eq!(p.subscribe(Prefix, "com.x.stat"), Decision::Partial, "com.x.status matches com..status");
        assert_eq!(p.subscribe(Prefix, "com.x.y"), Decision::Denied, "no com.x.y… topic has three components ending in status");
        assert!(p.may_receive("com.app.public.x") && !p.may_receive("com.app.private.x"));
    }

    #[test]
    fn token_claims_narrow_the_role() {
        let p = Permissions::new(
            Actions { subscribe: set(&["*"]), publish: set(&["chat.*"]), call: set(&["shop.*"]), register: set(&["*"]) },
            Actions { subscribe: Some(set(&["orders.7.*"])), publish: Some(set(&["chat.room1"])), call: Some(set(&["shop.cart.*"])), register: None },
            false,
        );
        assert_eq!(p.subscribe(Exact, "orders.7.paid"), Decision::Full);
        assert_eq!(p.subscribe(Exact, "orders.8.paid"), Decision::Denied);
        assert_eq!(p.subscribe(Prefix, "orders"), Decision::Partial);
        assert!(p.may_publish("chat.room1") && !p.may_publish("chat.room2") && !p.may_publish("orders.7.x"));
        assert!(p.may_call("shop.cart.add") && !p.may_call("shop.admin.wipe") && !p.may_call("other.x"));
        assert!(p.may_register(Exact, "anything.at.all") && p.may_register(Prefix, "a.b"), "no register claim: the role's rights");
    }

    #[test]
    fn registrations_must_be_covered_by_the_rights() {
        let p = Permissions::new(Actions { register: set(&["shop.*", "tools..run"]), ..Default::default() }, Actions::default(), false);
        assert!(p.may_register(Exact, "shop.cart.add"));
        assert!(p.may_register(Prefix, "shop.cart."), "every procedure under it is allowed");
        assert!(!p.may_register(Prefix, "shop"), "`shopping.x` would match it too");
        assert!(p.may_register(Wildcard, "tools..run"));
        assert!(!p.may_register(Wildcard, "tools.."), "partly allowed is not enough to register");
        assert!(!p.may_register(Exact, "admin.wipe"));
        assert!(!p.may_call("shop.cart.add"), "no call rights without call patterns");
    }
}
