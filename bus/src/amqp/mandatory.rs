//! [`Delivery::Subscribed`](crate::Delivery::Subscribed) on RabbitMQ: events
//! published `mandatory`, and the answer to each from RabbitMQ's confirms
//! and returns.
//!
//! # Why a channel of their own, in rounds, matched by message id
//!
//! RabbitMQ answers a `mandatory` event it cannot route with a `basic.return`
//! (the event itself, sent before the event's `basic.ack`), and confirms
//! events with acks that may cover many at once (`multiple`), in any order.
//! Nothing in a return names the publish it answers: only its content can be
//! matched. lapin 4 hands each return to whichever pending confirm it
//! completes next, which under overlapping publishes is often another
//! event's (a return for A in B's confirmation), so "the confirmation of my
//! event carries a return" is not an answer.
//!
//! So these events take another path than [`Delivery::Accepted`] ones:
//!
//! * **A channel of their own.** Only `mandatory` events are published on
//!   it, so every return and confirm there belongs to one of them; the
//!   `Accepted` channel never sees a return and keeps its lock-free path
//!   (send, await the confirm).
//! * **Message ids.** Each event carries its publication id as its AMQP
//!   `message_id`, and a return is matched to its event by that id, whichever
//!   confirmation lapin attached it to. Two events with one publication id
//!   never share a round (the second waits for the next), so the match is
//!   unambiguous.
//! * **Rounds.** One task publishes what is waiting (in order, up to
//!   [`MAX_ROUND`]) and awaits every confirm of that round before answering
//!   any: every event of the round then has its `basic.ack` or `basic.nack`,
//!   each return arrived before its event's ack, and lapin attaches waiting
//!   returns one per completed confirm, so when all of a round's confirms
//!   are complete every return of the round has been attached to one of
//!   them (a queue served once per confirm, each return before its own
//!   confirm, is empty once they all completed). Nothing is left over for the
//!   next round. Publishes that arrive meanwhile form the next round: under
//!   load a round holds everything that waited, so a `Subscribed` publish
//!   waits for the round in flight and its own (unless more than
//!   [`MAX_ROUND`] wait), and throughput does not suffer.
//!
//! The task has no timeouts of its own: a caller that stops waiting (its
//! `connect_timeout`) answers itself, an event whose caller is gone before
//! its round is not published, and a round ends when RabbitMQ answered
//! every event or the channel failed (a lost connection fails every confirm).
//! Never dropping a pending confirm keeps the channel's bookkeeping exact.

use std::collections::{HashSet, VecDeque};

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, Confirmation};
use tokio::sync::{mpsc, oneshot};

use super::CONTENT_TYPE;
use crate::PublishError;

/// Most events in one round.
pub(super) const MAX_ROUND: usize = 1024;
/// Most events waiting for a round; a publish beyond waits for room.
const QUEUE: usize = 8 * MAX_ROUND;

/// One event for the mandatory channel, with where its answer goes.
pub(super) struct Request {
    /// Its publication id, sent as the AMQP `message_id`.
    pub(super) publication: u64,
    /// For the `NoSubscriber` message.
    pub(super) topic: String,
    pub(super) routing_key: String,
    /// The encoded envelope.
    pub(super) payload: Vec<u8>,
    /// A control message: it goes to the control exchange.
    pub(super) control: bool,
    pub(super) answer: oneshot::Sender<Result<(), PublishError>>,
}

/// Where `mandatory` publishes go: a cheap handle to the task that owns the
/// mandatory channel. The task ends with the channel's session (once every
/// handle is gone).
#[derive(Clone)]
pub(super) struct Mandatory {
    requests: mpsc::Sender<Request>,
}

impl Mandatory {
    /// Starts the task publishing through `channel` (in confirm mode) to
    /// `exchanges`: events to the first, control messages to the second.
    pub(super) fn start(channel: Channel, exchange: [String; 2], redacted: String) -> Mandatory {
        let (requests, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(channel, exchange, redacted, rx));
        Mandatory { requests }
    }

    /// Hands `request` to the task; `Err` when the task is gone (its session ended).
    pub(super) async fn send(&self, request: Request) -> Result<(), ()> {
        self.requests.send(request).await.map_err(|_| ())
    }
}

async fn run(channel: Channel, exchange: [String; 2], redacted: String, mut requests: mpsc::Receiver<Request>) {
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut arrived = Vec::with_capacity(MAX_ROUND);
    loop {
        if waiting.is_empty() {
            if requests.recv_many(&mut arrived, MAX_ROUND).await == 0 {
                return;
            }
            waiting.extend(arrived.drain(..));
        }
        while waiting.len() < MAX_ROUND {
            match requests.try_recv() {
                Ok(r) => waiting.push_back(r),
                Err(_) => break,
            }
        }
        let round = take_round(&mut waiting);
        publish_round(&channel, &exchange, &redacted, round).await;
    }
}

/// The next round from the front of `waiting`, in order: up to [`MAX_ROUND`]
/// events, stopping before a publication id already in it; events whose
/// caller stopped waiting are dropped unpublished.
fn take_round(waiting: &mut VecDeque<Request>) -> Vec<Request> {
    let mut ids = HashSet::new();
    let mut round = Vec::new();
    while let Some(next) = waiting.front() {
        if round.len() == MAX_ROUND || ids.contains(&next.publication) {
            break;
        }
        let Some(request) = waiting.pop_front() else { break };
        if request.answer.is_closed() {
            continue;
        }
        ids.insert(request.publication);
        round.push(request);
    }
    round
}

/// Publishes a round in order, awaits every confirm, then answers each event.
async fn publish_round(channel: &Channel, exchange: &[String; 2], redacted: &str, round: Vec<Request>) {
    let mut confirms = Vec::with_capacity(round.len());
    for r in &round {
        let properties = BasicProperties::default().with_content_type(CONTENT_TYPE.into()).with_message_id(r.publication.to_string().into());
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        confirms.push(
            channel
                .basic_publish(exchange[usize::from(r.control)].as_str().into(), r.routing_key.as_str().into(), options, &r.payload, properties)
                .await,
        );
    }
    let outcomes = futures_util::future::join_all(confirms.into_iter().map(|sent| async move {
        match sent {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        }
    }))
    .await;
    // Every return of the round is attached to one of its confirmations now.
    let mut returned = HashSet::new();
    let mut unmatched = 0usize;
    for outcome in &outcomes {
        if let Ok(Confirmation::Ack(Some(message)) | Confirmation::Nack(Some(message))) = outcome {
            match message.delivery.properties.message_id().as_ref().and_then(|id| id.as_str().parse::<u64>().ok()) {
                Some(id) => {
                    returned.insert(id);
                }
                None => unmatched += 1,
            }
        }
    }
    if unmatched > 0 {
        tracing::warn!(bus = %redacted, unmatched, "RabbitMQ returned events without a message id on the mandatory channel; their round is answered as unavailable");
    }
    let failed = |why: String| PublishError::Unavailable(format!("RabbitMQ at {redacted} did not take the event: {why}"));
    for (r, outcome) in round.into_iter().zip(outcomes) {
        let answer = match outcome {
            Err(e) => Err(failed(e.to_string())),
            Ok(Confirmation::Nack(_)) => Err(failed("the broker refused it (nack)".into())),
            Ok(Confirmation::NotRequested) => Err(failed("publisher confirms are off on this channel".into())),
            Ok(Confirmation::Ack(_)) if returned.contains(&r.publication) => {
                Err(PublishError::NoSubscriber(format!("no node is subscribed to `{}` (RabbitMQ returned it: no queue is bound for it)", r.topic)))
            }
            // Never `Ok` for an event whose return could not be told apart.
            Ok(Confirmation::Ack(_)) if unmatched > 0 => Err(failed("RabbitMQ returned an event this client could not match; retry".into())),
            Ok(Confirmation::Ack(_)) => Ok(()),
        };
        let _ = r.answer.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(publication: u64) -> (Request, oneshot::Receiver<Result<(), PublishError>>) {
        let (answer, rx) = oneshot::channel();
        (Request { publication, topic: "t".into(), routing_key: "realm1.t".into(), payload: Vec::new(), control: false, answer }, rx)
    }

    #[test]
    fn rounds_keep_order_and_never_repeat_an_id() {
        let mut receivers = Vec::new();
        let mut waiting = VecDeque::new();
        for id in [1, 2, 3, 2, 4, 5] {
            let (r, rx) = request(id);
            waiting.push_back(r);
            receivers.push(rx);
        }
        // The caller of event 3 stopped waiting: it is not published.
        drop(receivers.remove(2));
        let ids = |round: Vec<Request>| round.iter().map(|r| r.publication).collect::<Vec<_>>();
        assert_eq!(ids(take_round(&mut waiting)), vec![1, 2]);
        assert_eq!(ids(take_round(&mut waiting)), vec![2, 4, 5]);
        assert!(take_round(&mut waiting).is_empty());
    }

    #[test]
    fn rounds_are_capped() {
        let mut receivers = Vec::new();
        let mut waiting = VecDeque::new();
        for id in 0..(MAX_ROUND as u64 + 3) {
            let (r, rx) = request(id);
            waiting.push_back(r);
            receivers.push(rx);
        }
        assert_eq!(take_round(&mut waiting).len(), MAX_ROUND);
        assert_eq!(take_round(&mut waiting).len(), 3);
    }
}
