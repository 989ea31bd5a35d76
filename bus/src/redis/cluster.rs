//! What a Redis Cluster adds to the Redis bus, as pure logic: where a
//! topic's keys and shard channel live, the cluster's slot map, and the
//! registry of pattern subscriptions.
//!
//! * A topic's keys and its shard channel carry one hash tag,
//!   `{realm:topic}`, so they live on one shard and the publish script can
//!   touch them all (Redis refuses a script that reaches into another slot).
//! * Exact subscriptions are sharded pub/sub (SSUBSCRIBE on the topic's
//!   primary): a topic's traffic stays on its shard.
//! * Sharded pub/sub has no patterns. Prefix and wildcard subscriptions
//!   use classic pub/sub (PSUBSCRIBE on any node), which a cluster
//!   broadcasts to every node; so that topics nobody matches by pattern are
//!   not broadcast, nodes write their patterns into a registry (a hash,
//!   one field per node) and publishers PUBLISH an event the classic way
//!   only when a registered pattern matches its topic. Publishers read the
//!   registry again when their copy is older than [`REGISTRY_FRESH`]; a
//!   node waits [`REGISTRY_WAIT`] after writing a new pattern before it
//!   answers SUBSCRIBED, so every publish from then on sees it.

use std::collections::BTreeMap;
use std::time::Duration;

use telegraphy_wamp::MatchPolicy;

use crate::interest::Interest;

/// How long a publisher uses its copy of the registry (and of the history
/// settings) before reading it again.
pub(crate) const REGISTRY_FRESH: Duration = Duration::from_secs(1);
/// How long a node waits after writing a new pattern before it counts the
/// pattern as in force: longer than any publisher's copy lives.
pub(crate) const REGISTRY_WAIT: Duration = Duration::from_millis(1200);
/// How often a node writes its entry again (and removes dead nodes' ones).
pub(crate) const REGISTRY_HEARTBEAT: Duration = Duration::from_secs(10);
/// How long an entry counts after it was written: a node that died stops
/// costing broadcasts after this. Clocks of nodes and publishers may differ
/// by up to this minus [`REGISTRY_HEARTBEAT`].
pub(crate) const REGISTRY_TTL: Duration = Duration::from_secs(60);

/// The number of hash slots of every Redis Cluster.
const SLOTS: u16 = 16384;

/// The hash slot of a key or shard channel, as Redis computes it (CRC16 of
/// the key, or of its hash tag: what is between the first `{` and the
/// first `}` after it, when that is not empty).
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&b| b == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// A node's address as the cluster announces it.
pub(crate) type Addr = (String, u16);

/// Which primary serves which slots (from `CLUSTER SLOTS`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SlotMap {
    /// (first slot, last slot, primary), by first slot.
    ranges: Vec<(u16, u16, Addr)>,
}

impl SlotMap {
    /// Reads the answer to `CLUSTER SLOTS`: per range its first and last
    /// slot, then its primary as (host, port, id, ...), then its replicas.
    pub(crate) fn from_reply(value: &redis::Value, seed_host: &str) -> Result<SlotMap, String> {
        let redis::Value::Array(ranges) = value else { return Err("CLUSTER SLOTS did not answer a list".into()) };
        let mut map = SlotMap::default();
        for range in ranges {
            let redis::Value::Array(fields) = range else { return Err("a CLUSTER SLOTS range is not a list".into()) };
            let int = |v: Option<&redis::Value>| match v {
                Some(redis::Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (Some(first), Some(last)) = (int(fields.first()), int(fields.get(1))) else {
                return Err("a CLUSTER SLOTS range has no slots".into());
            };
            let Some(redis::Value::Array(primary)) = fields.get(2) else { return Err("a CLUSTER SLOTS range has no primary".into()) };
            let host = match primary.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(redis::Value::SimpleString(s)) => s.clone(),
                _ => String::new(),
            };
            // An empty or `?` host means "the address you asked me on".
            let host = if host.is_empty() || host == "?" { seed_host.to_string() } else { host };
            let Some(port) = int(primary.get(1)) else { return Err("a CLUSTER SLOTS primary has no port".into()) };
            map.ranges.push((first, last, (host, port)));
        }
        map.ranges.sort_by_key(|r| r.0);
        Ok(map)
    }

    /// The primary serving `slot`, when one does.
    pub(crate) fn primary(&self, slot: u16) -> Option<&Addr> {
        let i = self.ranges.partition_point(|r| r.0 <= slot);
        let (first, last, addr) = self.ranges.get(i.checked_sub(1)?)?;
        (*first <= slot && slot <= *last).then_some(addr)
    }
}

/// How an interest is served on a cluster: its shard channel, or a glob
/// pattern of classic pub/sub.
pub(crate) fn is_pattern(i: &Interest) -> bool {
    i.policy != MatchPolicy::Exact
}

/// A node's registry entry: when it stops counting (milliseconds since the
/// epoch), then one `realm\tpolicy\tpattern` line per pattern interest.
pub(crate) fn entry(expires_ms: u64, patterns: &[&Interest]) -> String {
    let mut text = expires_ms.to_string();
    for i in patterns {
        let policy = if i.policy == MatchPolicy::Prefix { "prefix" } else { "wildcard" };
        text.push_str(&format!("\n{}\t{policy}\t{}", i.realm, i.pattern));
    }
    text
}

/// The patterns of the registry's entries still in force at `now_ms`.
pub(crate) fn live_patterns(entries: &BTreeMap<String, String>, now_ms: u64) -> Vec<Interest> {
    let mut out: Vec<Interest> = Vec::new();
    for text in entries.values() {
        let mut lines = text.lines();
        let Some(Ok(expires)) = lines.next().map(str::parse::<u64>) else { continue };
        if expires < now_ms {
            continue;
        }
        for line in lines {
            let mut parts = line.splitn(3, '\t');
            let (Some(realm), Some(policy), Some(pattern)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Some(policy) = MatchPolicy::parse(policy) else { continue };
            let i = Interest { realm: realm.into(), policy, pattern: pattern.into() };
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    out
}

/// The registry fields whose entries expired before `now_ms` (dead nodes).
pub(crate) fn expired(entries: &BTreeMap<String, String>, now_ms: u64) -> Vec<String> {
    entries
        .iter()
        .filter(|(_, text)| text.lines().next().and_then(|l| l.parse::<u64>().ok()).is_none_or(|e| e < now_ms))
        .map(|(field, _)| field.clone())
        .collect()
}

/// Whether any of `patterns` matches `topic` of `realm`.
pub(crate) fn pattern_matches(patterns: &[Interest], realm: &str, topic: &str) -> bool {
    patterns.iter().any(|i| i.realm == realm && i.policy.matches(&i.pattern, topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_as_redis_computes_them() {
        // Figures from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(slot("foo{}{bar}"), slot("bar"), "an empty tag hashes the whole key");
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("t:h:{r:a.b}"), slot("t:{r:a.b}"));
    }

    #[test]
    fn slot_map() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let range = |a: i64, b: i64, host: &str, port: i64| {
            redis::Value::Array(vec![
                redis::Value::Int(a),
                redis::Value::Int(b),
                redis::Value::Array(vec![bulk(host), redis::Value::Int(port), bulk("id")]),
                redis::Value::Array(vec![bulk("10.0.0.9"), redis::Value::Int(7100), bulk("replica")]),
            ])
        };
        let reply = redis::Value::Array(vec![range(5461, 10922, "10.0.0.2", 7001), range(0, 5460, "", 7000), range(10923, 16383, "10.0.0.3", 7002)]);
        let map = SlotMap::from_reply(&reply, "seed").unwrap();
        assert_eq!(map.primary(0), Some(&("seed".to_string(), 7000)));
        assert_eq!(map.primary(5461), Some(&("10.0.0.2".to_string(), 7001)));
        assert_eq!(map.primary(16383), Some(&("10.0.0.3".to_string(), 7002)));
        let partial = SlotMap::from_reply(&redis::Value::Array(vec![range(100, 200, "h", 1)]), "seed").unwrap();
        assert_eq!(partial.primary(99), None);
        assert_eq!(partial.primary(201), None);
        assert!(SlotMap::from_reply(&redis::Value::Int(1), "seed").is_err());
    }

    #[test]
    fn registry_entries() {
        let p = Interest { realm: "realm1".into(), policy: MatchPolicy::Prefix, pattern: "com.shop.".into() };
        let w = Interest { realm: "realm1".into(), policy: MatchPolicy::Wildcard, pattern: "a..c".into() };
        let mut entries = BTreeMap::new();
        entries.insert("node-a".to_string(), entry(2_000, &[&p, &w]));
        entries.insert("node-b".to_string(), entry(500, &[&w]));
        entries.insert("junk".to_string(), "not a number".to_string());
        let live = live_patterns(&entries, 1_000);
        assert_eq!(live, vec![p.clone(), w.clone()]);
        assert!(pattern_matches(&live, "realm1", "com.shop.order.1"));
        assert!(pattern_matches(&live, "realm1", "a.b.c"));
        assert!(!pattern_matches(&live, "realm1", "a.b.d"));
        assert!(!pattern_matches(&live, "realm2", "com.shop.x"));
        assert_eq!(expired(&entries, 1_000), vec!["junk".to_string(), "node-b".to_string()]);
        assert!(live_patterns(&entries, 3_000).is_empty());
    }
}
