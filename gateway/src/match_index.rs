//! The URI match index: which (match policy, pattern) entries a concrete
//! URI matches. Used by the broker for subscriptions (every match gets the
//! event) and shaped for the dealer's registrations (the one best match).
//!
//! Cost per lookup: one hash lookup for exact entries, one per distinct
//! prefix length for prefix entries, and a component-wise comparison with
//! the wildcard patterns that have as many components as the URI.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use telegraphy_wamp::MatchPolicy;

/// Entries keyed by (match policy, pattern), each holding a `V`.
pub(crate) struct MatchIndex<V> {
    exact: HashMap<Arc<str>, V>,
    prefix: HashMap<Arc<str>, V>,
    /// Distinct prefix lengths in use (length → how many prefixes), ascending.
    prefix_lens: BTreeMap<usize, usize>,
    /// Wildcard patterns by component count.
    wildcard: HashMap<usize, Vec<(Arc<str>, V)>>,
    len: usize,
}

impl<V> Default for MatchIndex<V> {
    fn default() -> Self {
        MatchIndex { exact: HashMap::new(), prefix: HashMap::new(), prefix_lens: BTreeMap::new(), wildcard: HashMap::new(), len: 0 }
    }
}

impl<V> MatchIndex<V> {
    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entry for (policy, pattern).
    pub(crate) fn get(&self, policy: MatchPolicy, pattern: &str) -> Option<&V> {
        match policy {
            MatchPolicy::Exact => self.exact.get(pattern),
            MatchPolicy::Prefix => self.prefix.get(pattern),
            MatchPolicy::Wildcard => self.wildcard.get(&components(pattern))?.iter().find(|(p, _)| &**p == pattern).map(|(_, v)| v),
        }
    }

    /// Adds an entry; returns the one it replaced.
    pub(crate) fn insert(&mut self, policy: MatchPolicy, pattern: Arc<str>, value: V) -> Option<V> {
        let old = match policy {
            MatchPolicy::Exact => self.exact.insert(pattern, value),
            MatchPolicy::Prefix => {
                let len = pattern.len();
                let old = self.prefix.insert(pattern, value);
                if old.is_none() {
                    *self.prefix_lens.entry(len).or_default() += 1;
                }
                old
            }
            MatchPolicy::Wildcard => {
                let list = self.wildcard.entry(components(&pattern)).or_default();
                match list.iter_mut().find(|(p, _)| *p == pattern) {
                    Some(slot) => Some(std::mem::replace(&mut slot.1, value)),
                    None => {
                        list.push((pattern, value));
                        None
                    }
                }
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the entry for (policy, pattern).
    pub(crate) fn remove(&mut self, policy: MatchPolicy, pattern: &str) -> Option<V> {
        let removed = match policy {
            MatchPolicy::Exact => self.exact.remove(pattern),
            MatchPolicy::Prefix => {
                let removed = self.prefix.remove(pattern);
                if removed.is_some() {
                    if let Some(n) = self.prefix_lens.get_mut(&pattern.len()) {
                        *n -= 1;
                        if *n == 0 {
                            self.prefix_lens.remove(&pattern.len());
                        }
                    }
                }
                removed
            }
            MatchPolicy::Wildcard => {
                let count = components(pattern);
                let list = self.wildcard.get_mut(&count)?;
                let at = list.iter().position(|(p, _)| &**p == pattern)?;
                let (_, v) = list.swap_remove(at);
                if list.is_empty() {
                    self.wildcard.remove(&count);
                }
                Some(v)
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// Calls `f` with every entry `uri` matches: the exact one, then the
    /// prefixes from the shortest, then the wildcard patterns.
    pub(crate) fn for_each_match(&self, uri: &str, mut f: impl FnMut(MatchPolicy, &V)) {
        if let Some(v) = self.exact.get(uri) {
            f(MatchPolicy::Exact, v);
        }
        for &len in self.prefix_lens.keys() {
            if len > uri.len() {
                break;
            }
            if uri.is_char_boundary(len) {
                if let Some(v) = self.prefix.get(&uri[..len]) {
                    f(MatchPolicy::Prefix, v);
                }
            }
        }
        if !self.wildcard.is_empty() {
            if let Some(list) = self.wildcard.get(&components(uri)) {
                for (pattern, v) in list {
                    if MatchPolicy::Wildcard.matches(pattern, uri) {
                        f(MatchPolicy::Wildcard, v);
                    }
                }
            }
        }
    }

    /// The one entry a call to `uri` goes to, by the WAMP rule for
    /// pattern-based registrations: an exact entry; else the longest
    /// prefix; else the wildcard pattern whose runs of concrete components
    /// (before each wildcard) are longest, compared run by run from the left.
    pub(crate) fn best_match(&self, uri: &str) -> Option<(MatchPolicy, &V)> {
        if let Some(v) = self.exact.get(uri) {
            return Some((MatchPolicy::Exact, v));
        }
        for &len in self.prefix_lens.keys().rev() {
            if len <= uri.len() && uri.is_char_boundary(len) {
                if let Some(v) = self.prefix.get(&uri[..len]) {
                    return Some((MatchPolicy::Prefix, v));
                }
            }
        }
        let list = self.wildcard.get(&components(uri))?;
        list.iter()
            .filter(|(pattern, _)| MatchPolicy::Wildcard.matches(pattern, uri))
            .max_by(|(a, _), (b, _)| concrete_runs(a).cmp(&concrete_runs(b)).then_with(|| b.cmp(a)))
            .map(|(_, v)| (MatchPolicy::Wildcard, v))
    }
}

fn components(uri: &str) -> usize {
    uri.split('.').count()
}

/// Lengths of the runs of non-empty components of a wildcard pattern:
/// `a.b..d.e..g` → `[2, 2, 1]`.
fn concrete_runs(pattern: &str) -> Vec<usize> {
    let mut runs = Vec::new();
    let mut run = 0;
    for c in pattern.split('.') {
        if c.is_empty() {
            if run > 0 {
                runs.push(run);
            }
            run = 0;
        } else {
            run += 1;
        }
    }
    if run > 0 {
        runs.push(run);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use MatchPolicy::{Exact, Prefix, Wildcard};

    fn index(entries: &[(MatchPolicy, &str, u32)]) -> MatchIndex<u32> {
        let mut ix = MatchIndex::default();
        for &(p, uri, v) in entries {
            assert!(ix.insert(p, Arc::from(uri), v).is_none());
        }
        ix
    }

    fn all(ix: &MatchIndex<u32>, uri: &str) -> Vec<(MatchPolicy, u32)> {
        let mut out = Vec::new();
        ix.for_each_match(uri, |p, v| out.push((p, *v)));
        out
    }

    #[test]
    fn every_match_of_each_policy() {
        let ix = index(&[
            (Exact, "a.b.c", 1),
            (Prefix, "a", 2),
            (Prefix, "a.b", 3),
            (Prefix, "a.bx", 4),
            (Wildcard, "a..c", 5),
            (Wildcard, ".b.", 6),
            (Wildcard, "a..", 7),
            (Wildcard, "a.b.c.", 8),
        ]);
        let mut got = all(&ix, "a.b.c");
        got.sort_by_key(|x| x.1);
        assert_eq!(got, vec![(Exact, 1), (Prefix, 2), (Prefix, 3), (Wildcard, 5), (Wildcard, 6), (Wildcard, 7)]);
        // A prefix is a string prefix, not a component prefix (the WAMP rule).
        assert_eq!(all(&ix, "a.bxy"), vec![(Prefix, 2), (Prefix, 3), (Prefix, 4)]);
        assert_eq!(all(&ix, "b"), vec![]);
        assert_eq!(ix.len(), 8);
    }

    #[test]
    fn the_same_pattern_under_two_policies_is_two_entries() {
        let ix = index(&[(Exact, "a.b", 1), (Prefix, "a.b", 2)]);
        assert_eq!(all(&ix, "a.b"), vec![(Exact, 1), (Prefix, 2)]);
        assert_eq!(all(&ix, "a.b.c"), vec![(Prefix, 2)]);
        assert_eq!(ix.get(Exact, "a.b"), Some(&1));
        assert_eq!(ix.get(Prefix, "a.b"), Some(&2));
        assert_eq!(ix.get(Wildcard, "a.b"), None);
    }

    #[test]
    fn removal_forgets_the_entry_and_its_bookkeeping() {
        let mut ix = index(&[(Prefix, "a.b", 1), (Prefix, "x.y", 2), (Wildcard, "a..c", 3), (Wildcard, "a..d", 4), (Exact, "e", 5)]);
        assert_eq!(ix.remove(Prefix, "a.b"), Some(1));
        assert_eq!(ix.remove(Prefix, "a.b"), None);
        assert_eq!(all(&ix, "a.b.c"), vec![(Wildcard, 3)]);
        // The other prefix of the same length still matches.
        assert_eq!(all(&ix, "x.y.z"), vec![(Prefix, 2)]);
        assert_eq!(ix.remove(Prefix, "x.y"), Some(2));
        assert!(ix.prefix_lens.is_empty());
        assert_eq!(ix.remove(Wildcard, "a..c"), Some(3));
        assert_eq!(all(&ix, "a.b.d"), vec![(Wildcard, 4)]);
        assert_eq!(ix.remove(Wildcard, "a..d"), Some(4));
        assert!(ix.wildcard.is_empty());
        assert_eq!(ix.remove(Exact, "e"), Some(5));
        assert_eq!(ix.len(), 0);
    }

    #[test]
    fn insert_replaces_without_counting_twice() {
        let mut ix = index(&[(Prefix, "a", 1), (Wildcard, "a.", 2)]);
        assert_eq!(ix.insert(Prefix, Arc::from("a"), 10), Some(1));
        assert_eq!(ix.insert(Wildcard, Arc::from("a."), 20), Some(2));
        assert_eq!(ix.len(), 2);
        assert_eq!(ix.prefix_lens.get(&1), Some(&1));
        assert_eq!(all(&ix, "a.x"), vec![(Prefix, 10), (Wildcard, 20)]);
    }

    #[test]
    fn a_prefix_never_splits_a_multibyte_character() {
        let ix = index(&[(Prefix, "é", 1), (Prefix, "ab", 2)]);
        // "é" is two bytes; "aé" has no char boundary at 2 ... and must not panic.
        assert_eq!(all(&ix, "aé"), vec![]);
        assert_eq!(ix.best_match("aé"), None);
        assert_eq!(all(&ix, "é.x"), vec![(Prefix, 1)]);
    }

    /// The examples of the WAMP spec's "calls matching multiple registrations".
    #[test]
    fn best_match_follows_the_wamp_rule() {
        let ix = index(&[
            (Exact, "a1.b2.c3.d4.e55", 1),
            (Prefix, "a1.b2.c3", 2),
            (Prefix, "a1.b2.c3.d4", 3),
            (Wildcard, "a1.b2..d4.e5", 4),
            (Wildcard, "a1.b2.c3..e5", 5),
            (Wildcard, "a1.b2..d4.e5..g7", 6),
            (Wildcard, "a1.b2..d4..f6.g7", 7),
        ]);
        let best = |uri| ix.best_match(uri).map(|(p, v)| (p, *v));
        assert_eq!(best("a1.b2.c3.d4.e55"), Some((Exact, 1)));
        assert_eq!(best("a1.b2.c3.d98.e74"), Some((Prefix, 2)));
        assert_eq!(best("a1.b2.c3.d4.e325"), Some((Prefix, 3)));
        assert_eq!(best("a1.b2.c55.d4.e5"), Some((Wildcard, 4)));
        assert_eq!(best("a1.b2.c3.d4.e5"), Some((Prefix, 3)), "a prefix beats any wildcard");
        assert_eq!(best("a2.b2.c2.d2.e2"), None);
        assert_eq!(best("a1.b2.c88.d4.e5.f6.g7"), Some((Wildcard, 6)));
        // Without the prefixes, the spec's wildcard example: the longer first run wins.
        let wild = index(&[(Wildcard, "a1.b2..d4.e5", 4), (Wildcard, "a1.b2.c3..e5", 5)]);
        assert_eq!(wild.best_match("a1.b2.c3.d4.e5").map(|(p, v)| (p, *v)), Some((Wildcard, 5)));
    }

    #[test]
    fn concrete_runs_of_patterns() {
        assert_eq!(concrete_runs("a1.b2..d4.e5..g7"), vec![2, 2, 1]);
        assert_eq!(concrete_runs("a1.b2..d4..f6.g7"), vec![2, 1, 2]);
        assert_eq!(concrete_runs(".b."), vec![1]);
        assert_eq!(concrete_runs(".."), Vec::<usize>::new());
    }
}
