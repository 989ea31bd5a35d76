//! Gaps on the live path: a node that missed events of a history topic (its
//! bus connection dropped while they were published, a broker restarted)
//! fetches them from the store and delivers them, in order, before newer
//! ones.
//!
//! The dispatcher remembers the last position it delivered per topic. An
//! event whose offset is more than one past it means a gap: the events in
//! between are read from the store first. An offset at or below it is a copy
//! already delivered: dropped. After the bus reconnects, every remembered
//! topic is read from its last position, so a topic that stays quiet after
//! an outage gets its missed events too.
//!
//! A store that went back (a Redis primary replaced by a replica that had not
//! received its last writes yet) numbers new events with offsets this node
//! already delivered: when a read after a reconnect finds the log's head
//! behind the last delivered offset, the node goes back to that head
//! ([`Continuity::rewind`]) instead of dropping the new events as copies.
//!
//! Memory is bounded: at most [`MAX_TOPICS`] topics are remembered; when full
//! the map starts over (gaps are then noticed from the next event on).

use std::collections::HashMap;

use telegraphy_bus::{Envelope, Position};

/// Most topics whose last position is remembered.
pub(crate) const MAX_TOPICS: usize = 100_000;

/// What to do with an event of a history topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// The next one (or the first seen, or a new epoch): deliver it.
    Next,
    /// Events between `after` and this one were missed: fetch them first.
    Gap { after: Position },
    /// Already delivered: drop it.
    Seen,
}

/// The last position delivered per (realm, topic).
#[derive(Default)]
pub(crate) struct Continuity {
    /// realm → topic → last position.
    last: HashMap<String, HashMap<String, Position>>,
    topics: usize,
}

impl Continuity {
    /// How `event` (which has a position) follows what was delivered.
    pub(crate) fn check(&self, event: &Envelope, position: Position) -> Check {
        match self.last.get(&event.realm).and_then(|t| t.get(&event.topic)) {
            Some(last) if last.epoch == position.epoch && position.offset <= last.offset => Check::Seen,
            Some(last) if last.epoch == position.epoch && position.offset > last.offset + 1 => Check::Gap { after: *last },
            _ => Check::Next,
        }
    }

    /// Records that `event` was delivered.
    pub(crate) fn delivered(&mut self, realm: &str, topic: &str, position: Position) {
        if let Some(slot) = self.last.get_mut(realm).and_then(|t| t.get_mut(topic)) {
            if slot.epoch != position.epoch || position.offset > slot.offset {
                *slot = position;
            }
            return;
        }
        if self.topics >= MAX_TOPICS {
            self.last.clear();
            self.topics = 0;
        }
        self.last.entry(realm.to_string()).or_default().insert(topic.to_string(), position);
        self.topics += 1;
    }

    /// The store's log of `topic` ends at `head`, before what this node
    /// delivered: offsets after it will be given to new events, which must
    /// not be taken for copies.
    pub(crate) fn rewind(&mut self, realm: &str, topic: &str, head: Position) {
        if let Some(slot) = self.last.get_mut(realm).and_then(|t| t.get_mut(topic)) {
            *slot = head;
        }
    }

    /// Every remembered topic with its last position (to read after a reconnect).
    pub(crate) fn remembered(&self) -> Vec<(String, String, Position)> {
        self.last.iter().flat_map(|(r, topics)| topics.iter().map(|(t, p)| (r.clone(), t.clone(), *p))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(topic: &str) -> Envelope {
        Envelope {
            realm: "realm1".into(),
            publication: 1,
            topic: topic.into(),
            args: vec![],
            kwargs: Default::default(),
            filter: Default::default(),
            publisher: None,
            published_at_us: 0,
            retain: false,
            position: None,
        }
    }

    fn at(offset: u64) -> Position {
        Position { epoch: 7, offset }
    }

    #[test]
    fn next_gap_and_copies() {
        let mut c = Continuity::default();
        let e = event("t");
        assert_eq!(c.check(&e, at(5)), Check::Next, "the first event seen starts the count");
        c.delivered("realm1", "t", at(5));
        assert_eq!(c.check(&e, at(6)), Check::Next);
        assert_eq!(c.check(&e, at(5)), Check::Seen);
        assert_eq!(c.check(&e, at(3)), Check::Seen);
        assert_eq!(c.check(&e, at(9)), Check::Gap { after: at(5) });
        assert_eq!(c.check(&e, Position { epoch: 8, offset: 1 }), Check::Next, "a new epoch starts over");
        assert_eq!(c.check(&event("other"), at(9)), Check::Next, "per topic");
        c.delivered("realm1", "t", at(4));
        assert_eq!(c.remembered(), vec![("realm1".to_string(), "t".to_string(), at(5))], "never moves back");
        c.rewind("realm1", "t", at(2));
        assert_eq!(c.check(&e, at(3)), Check::Next, "after the store went back, its next offsets are new events");
        c.rewind("realm1", "unknown", at(2));
        assert_eq!(c.remembered().len(), 1);
    }
}
