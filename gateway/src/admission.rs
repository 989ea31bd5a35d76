//! Admission: every connection the public listener accepts, from the moment
//! it is accepted until it closes, authenticated or not.
//!
//! * **One limit for everything**: a connection takes one of
//!   `limits.max_connections` slots at accept time, before it has sent a
//!   byte, whether it becomes a WebSocket or stays an HTTP request.
//! * **Deadlines per phase** while it is not trusted yet: request headers
//!   within `limits.http_header_timeout` of the accept (and of the end of
//!   the previous request, on a kept-alive connection); a `POST /publish`
//!   body within `limits.http_body_timeout` (checked by the handler after
//!   the API key); HELLO and authentication within `limits.handshake_timeout`
//!   of the WebSocket upgrade (checked by the connection's task).
//! * **Untrusted first out**: when every slot is taken, or the process is
//!   out of file descriptors, the oldest connection that has not
//!   authenticated yet is shed (closed without a word) to make room, so an
//!   attacker holding idle sockets cannot lock logins out. Connections
//!   become trusted at WELCOME, or on a valid API key.
//! * **Per address**: at most `limits.max_unauthenticated_per_ip`
//!   untrusted connections from one IP; more are closed at accept.
//! * When every slot is held by trusted connections, a few more
//!   ([`OVERFLOW`]) are let in just long enough to be told HTTP 503.
//! * **New connections per second**, from everyone (`limits.connection_rate`)
//!   and per client address (`limits.connection_rate_per_ip`, an IPv6
//!   client by its /64): over either, a connection is let in as one of
//!   the [`OVERFLOW`] only to be told HTTP 503 or 429.
//! * **Behind trusted proxies** ([`crate::proxy`]): a connection from a
//!   trusted proxy counts against no address until its client is known
//!   (PROXY header, `X-Forwarded-For`); then [`Ticket::readdress`] counts
//!   it, per request, against the client's own address.
//! * **WebSockets**: at most `limits.max_pending_handshakes` upgraded
//!   connections that have not finished HELLO/authentication
//!   ([`Admission::take_handshake`]), and at most
//!   `limits.max_connections_per_ip` WebSockets per address when set
//!   ([`Admission::take_websocket_for`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Connections let in beyond the limit only to be refused with HTTP 503.
pub(crate) const OVERFLOW: usize = 32;

/// Why a connection was not admitted (or, let in without a slot, what it
/// is told).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Too many untrusted connections from this address.
    PerIp,
    /// Every slot and the overflow are taken by trusted connections.
    Full,
    /// Over `limits.connection_rate` (this node's new connections per second).
    Rate,
    /// Over `limits.connection_rate_per_ip` (this address's).
    RatePerIp,
}

/// A keyed token bucket per client address.
type PerAddressRate = governor::DefaultKeyedRateLimiter<IpAddr>;

/// Addresses remembered by the per-address rate before the forgotten ones
/// are swept (those whose bucket is full again).
const RATE_SWEEP_ABOVE: usize = 10_000;

/// The key an address's connection rate is counted under: the address, or
/// for IPv6 its /64 (one subscriber's whole allocation).
fn rate_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// The admission state of one node's public listener.
pub(crate) struct Admission {
    max_connections: usize,
    max_untrusted_per_ip: usize,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    /// `limits.max_pending_handshakes`, and how many are taken.
    max_handshakes: usize,
    handshakes: AtomicUsize,
    /// `limits.max_connections_per_ip` (0: no limit), and the WebSockets per address.
    max_websockets_per_ip: usize,
    websockets_per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Load balancers whose connections count against their clients.
    proxies: crate::proxy::TrustedProxies,
    /// `limits.connection_rate` and `limits.connection_rate_per_ip`.
    rate: Option<governor::DefaultDirectRateLimiter>,
    rate_per_ip: Option<PerAddressRate>,
}

#[derive(Default)]
struct State {
    next_seq: u64,
    /// Connections holding a slot.
    admitted: usize,
    /// Connections let in past the limit, to be told 503.
    overflow: usize,
    /// Untrusted connections holding a slot, oldest first.
    untrusted: BTreeMap<u64, CancellationToken>,
    /// Untrusted connections per address.
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    /// Admission under the configured limits.
    #[cfg(test)]
    pub(crate) fn new(limits: &crate::config::Limits, metrics: Arc<Metrics>) -> Arc<Admission> {
        Admission::behind(limits, crate::proxy::TrustedProxies::default(), metrics)
    }

    /// Admission under the configured limits, behind `proxies`.
    pub(crate) fn behind(limits: &crate::config::Limits, proxies: crate::proxy::TrustedProxies, metrics: Arc<Metrics>) -> Arc<Admission> {
        let rate = crate::config::rate_limiter(limits.connection_rate, limits.connection_burst);
        let rate_per_ip =
            crate::config::rate_quota(limits.connection_rate_per_ip, limits.connection_burst_per_ip).map(governor::RateLimiter::hashmap);
        Arc::new(Admission {
            proxies,
            rate,
            rate_per_ip,
            max_connections: limits.max_connections,
            max_untrusted_per_ip: limits.max_unauthenticated_per_ip,
            state: Mutex::new(State::default()),
            metrics,
            max_handshakes: limits.max_pending_handshakes,
            handshakes: AtomicUsize::new(0),
            max_websockets_per_ip: limits.max_connections_per_ip,
            websockets_per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// One of `limits.max_pending_handshakes`, held until the session is
    /// established or the connection ends; `None` when all are taken.
    pub(crate) fn take_handshake(self: &Arc<Self>) -> Option<HandshakeSlot> {
        let limit = self.max_handshakes;
        let taken = self.handshakes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).is_ok();
        taken.then(|| HandshakeSlot(self.clone()))
    }

    /// One of `limits.max_connections_per_ip` WebSockets for `ip` (always
    /// given when there is no such limit); `None` when the address has its
    /// share.
    pub(crate) fn take_websocket_for(self: &Arc<Self>, ip: IpAddr) -> Option<WebSocketSlot> {
        if self.max_websockets_per_ip == 0 {
            return Some(WebSocketSlot(None));
        }
        let mut map = self.websockets_per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= self.max_websockets_per_ip {
            return None;
        }
        *n += 1;
        Some(WebSocketSlot(Some((self.clone(), ip))))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The trusted proxies this admission counts connections behind.
    pub(crate) fn proxies(&self) -> &crate::proxy::TrustedProxies {
        &self.proxies
    }

    /// Takes one new connection from `ip`'s rate; false when over it.
    fn within_rate_of(&self, ip: IpAddr) -> bool {
        let Some(limiter) = &self.rate_per_ip else { return true };
        let ok = limiter.check_key(&rate_key(ip)).is_ok();
        if limiter.len() > RATE_SWEEP_ABOVE {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        ok
    }

    /// Admits a connection just accepted from `ip`, shedding the oldest
    /// untrusted one if every slot is taken. A connection over a rate is
    /// let in without a slot (as the overflow is) to be told so.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, header_timeout: Duration) -> Result<Arc<Ticket>, Refused> {
        // A trusted proxy is not a client: its connections count against
        // their clients once those are known (`Ticket::readdress`).
        let counted = (!self.proxies.trusts(ip)).then_some(ip);
        let over_rate = if self.rate.as_ref().is_some_and(|r| r.check().is_err()) {
            self.metrics.refused("connection_rate");
            Some(Refused::Rate)
        } else if counted.is_some_and(|ip| !self.within_rate_of(ip)) {
            self.metrics.refused("connection_rate_per_ip");
            Some(Refused::RatePerIp)
        } else {
            None
        };
        let mut state = self.lock();
        if let Some(ip) = counted {
            let from_ip = state.per_ip.get(&ip).copied().unwrap_or(0);
            if self.max_untrusted_per_ip > 0 && from_ip >= self.max_untrusted_per_ip {
                self.metrics.refused("unauthenticated_per_ip");
                return Err(Refused::PerIp);
            }
        }
        if let Some(why) = over_rate {
            if state.overflow >= OVERFLOW {
                return Err(why);
            }
            state.overflow += 1;
            drop(state);
            return Ok(self.ticket(u64::MAX, None, Some(why), CancellationToken::new(), header_timeout));
        }
        let slot = if state.admitted < self.max_connections {
            true
        } else if let Some((_, victim)) = state.untrusted.pop_first() {
            // The victim's slot passes to the newcomer: its ticket no longer
            // counts (see `Ticket::drop`).
            victim.cancel();
            state.admitted -= 1;
            self.metrics.shed_connections.inc();
            true
        } else if state.overflow < OVERFLOW {
            false
        } else {
            self.metrics.refused("max_connections");
            return Err(Refused::Full);
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        let shed = CancellationToken::new();
        if slot {
            state.admitted += 1;
            state.untrusted.insert(seq, shed.clone());
            if let Some(ip) = counted {
                *state.per_ip.entry(ip).or_default() += 1;
            }
        } else {
            state.overflow += 1;
        }
        drop(state);
        Ok(self.ticket(seq, counted, (!slot).then_some(Refused::Full), shed, header_timeout))
    }

    fn ticket(
        self: &Arc<Self>,
        seq: u64,
        ip: Option<IpAddr>,
        refused: Option<Refused>,
        shed: CancellationToken,
        header_timeout: Duration,
    ) -> Arc<Ticket> {
        Arc::new(Ticket {
            admission: self.clone(),
            seq,
            ip: Mutex::new(ip),
            refused,
            trusted: AtomicBool::new(false),
            shed,
            deadline: Mutex::new(Some(Instant::now() + header_timeout)),
            deadline_changed: Notify::new(),
        })
    }

    /// Sheds the oldest untrusted connection (the process is out of file
    /// descriptors); returns whether there was one.
    pub(crate) fn shed_oldest(&self) -> bool {
        let mut state = self.lock();
        match state.untrusted.pop_first() {
            Some((_, victim)) => {
                victim.cancel();
                state.admitted -= 1;
                self.metrics.shed_connections.inc();
                true
            }
            None => false,
        }
    }

    /// Connections holding a slot (for tests and metrics).
    pub(crate) fn admitted(&self) -> usize {
        self.lock().admitted
    }
}

/// One of `limits.max_pending_handshakes` ([`Admission::take_handshake`]).
pub(crate) struct HandshakeSlot(Arc<Admission>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of an address's `limits.max_connections_per_ip` WebSockets
/// ([`Admission::take_websocket_for`]); nothing when there is no limit.
pub(crate) struct WebSocketSlot(Option<(Arc<Admission>, IpAddr)>);

impl Drop for WebSocketSlot {
    fn drop(&mut self) {
        if let Some((admission, ip)) = &self.0 {
            let mut map = admission.websockets_per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(ip);
                }
            }
        }
    }
}

/// One admitted connection's place. Dropped when the connection ends.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    seq: u64,
    /// The client address it counts against (`None`: not known yet, a
    /// trusted proxy's connection).
    ip: Mutex<Option<IpAddr>>,
    /// Why it holds no slot (let in past a limit or a rate only to be told
    /// so); `None` for a connection holding a slot.
    refused: Option<Refused>,
    trusted: AtomicBool,
    /// Cancelled when the connection is shed.
    shed: CancellationToken,
    /// When the connection must have moved on (`None`: no deadline now).
    deadline: Mutex<Option<Instant>>,
    deadline_changed: Notify,
}

impl Ticket {
    /// Whether the connection holds a slot (else it is told 503).
    pub(crate) fn has_slot(&self) -> bool {
        self.refused.is_none()
    }

    /// Why the connection has no slot, if it was over a rate (`Rate`,
    /// `RatePerIp`) or the node is full (`Full`).
    pub(crate) fn refused(&self) -> Option<Refused> {
        self.refused
    }

    /// The client behind the connection is `client` (learnt from a trusted
    /// proxy, for the request at hand): from now on it counts against that
    /// address, and takes from its connection rate when the address is new
    /// to this connection. Refused like a new connection from it would be.
    pub(crate) fn readdress(&self, client: IpAddr) -> Result<(), Refused> {
        let a = &self.admission;
        let mut ip = self.ip.lock().unwrap_or_else(|e| e.into_inner());
        if *ip == Some(client) || !self.has_slot() {
            return Ok(());
        }
        if self.is_trusted() {
            *ip = Some(client);
            return Ok(());
        }
        if !a.within_rate_of(client) {
            a.metrics.refused("connection_rate_per_ip");
            return Err(Refused::RatePerIp);
        }
        let mut state = a.lock();
        if !state.untrusted.contains_key(&self.seq) {
            // Shed meanwhile, or trusted: nothing counted any more.
            *ip = Some(client);
            return Ok(());
        }
        if a.max_untrusted_per_ip > 0 && state.per_ip.get(&client).copied().unwrap_or(0) >= a.max_untrusted_per_ip {
            a.metrics.refused("unauthenticated_per_ip");
            return Err(Refused::PerIp);
        }
        release_ip(&mut state, *ip);
        *state.per_ip.entry(client).or_default() += 1;
        *ip = Some(client);
        Ok(())
    }

    /// The address the connection counts against, once known.
    fn counted_ip(&self) -> Option<IpAddr> {
        *self.ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection authenticated (WELCOME, a valid API key): it is no
    /// longer shed, its phase deadlines end, and it no longer counts
    /// against its address's untrusted connections.
    pub(crate) fn trust(&self) {
        if self.trusted.swap(true, Ordering::AcqRel) || !self.has_slot() {
            return;
        }
        let ip = self.counted_ip();
        let mut state = self.admission.lock();
        if state.untrusted.remove(&self.seq).is_some() {
            release_ip(&mut state, ip);
        }
    }

    /// Whether [`Ticket::trust`] was called.
    pub(crate) fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Resolves when the connection is shed.
    pub(crate) async fn shed(&self) {
        self.shed.cancelled().await
    }

    /// Sets (or clears) the deadline of the current phase.
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
        self.deadline_changed.notify_one();
    }

    /// Resolves when the connection must be closed: shed, or its phase
    /// deadline passed.
    pub(crate) async fn expired(&self) {
        loop {
            let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
            let changed = self.deadline_changed.notified();
            tokio::select! {
                _ = self.shed.cancelled() => return,
                _ = changed => {}
                _ = sleep_until(deadline) => {
                    if self.deadline.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|d| d <= Instant::now()) {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn release_ip(state: &mut State, ip: Option<IpAddr>) {
    let Some(ip) = ip else { return };
    if let Some(n) = state.per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            state.per_ip.remove(&ip);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let ip = self.counted_ip();
        let mut state = self.admission.lock();
        if !self.has_slot() {
            state.overflow -= 1;
            return;
        }
        let untrusted = state.untrusted.remove(&self.seq).is_some();
        if self.shed.is_cancelled() && !untrusted {
            // Shed: its slot passed to another connection already; only its
            // address count is left to give back.
            release_ip(&mut state, ip);
            return;
        }
        if untrusted {
            release_ip(&mut state, ip);
        }
        state.admitted -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_ip: usize) -> Arc<Admission> {
        let limits = crate::config::Limits { max_connections: max, max_unauthenticated_per_ip: per_ip, ..Default::default() };
        Admission::new(&limits, Arc::new(Metrics::new()))
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const T: Duration = Duration::from_secs(10);

    #[test]
    fn handshake_slots_are_bounded_and_given_back() {
        let limits = crate::config::Limits { max_pending_handshakes: 2, ..Default::default() };
        let a = Admission::new(&limits, Arc::new(Metrics::new()));
        let (one, two) = (a.take_handshake().unwrap(), a.take_handshake().unwrap());
        assert!(a.take_handshake().is_none(), "a third handshake is refused");
        drop(one);
        let three = a.take_handshake().expect("a slot given back is taken again");
        drop((two, three));
        assert_eq!(a.handshakes.load(Ordering::Acquire), 0);
    }

    #[test]
    fn websockets_per_address_are_bounded_when_configured() {
        let other: IpAddr = "10.0.0.9".parse().unwrap();
        let limits = crate::config::Limits { max_connections_per_ip: 1, ..Default::default() };
        let a = Admission::new(&limits, Arc::new(Metrics::new()));
        let first = a.take_websocket_for(IP).unwrap();
        assert!(a.take_websocket_for(IP).is_none(), "one per address");
        let _elsewhere = a.take_websocket_for(other).expect("another address has its own share");
        drop(first);
        assert!(a.take_websocket_for(IP).is_some());
        drop(_elsewhere);
        assert!(a.websockets_per_ip.lock().unwrap().get(&other).is_none(), "an address with none left is forgotten");
        // No limit configured: always given, nothing counted.
        let unlimited = Admission::new(&crate::config::Limits { max_connections_per_ip: 0, ..Default::default() }, Arc::new(Metrics::new()));
        let held: Vec<_> = (0..100).map(|_| unlimited.take_websocket_for(IP).unwrap()).collect();
        assert!(unlimited.websockets_per_ip.lock().unwrap().is_empty());
        drop(held);
    }

    #[tokio::test]
    async fn the_oldest_untrusted_connection_makes_room() {
        let a = admission(2, 0);
        let first = a.admit(IP, T).unwrap();
        let second = a.admit(IP, T).unwrap();
        second.trust();
        let third = a.admit(IP, T).unwrap();
        assert!(third.has_slot());
        // The first (untrusted, oldest) was shed; the trusted one was not.
        tokio::time::timeout(Duration::from_secs(1), first.shed()).await.expect("shed");
        assert!(!second.shed.is_cancelled());
        assert_eq!(a.admitted(), 2);
        drop(first);
        assert_eq!(a.admitted(), 2, "a shed ticket gave its slot away already");
        drop(third);
        assert_eq!(a.admitted(), 1);
        drop(second);
        assert_eq!(a.admitted(), 0);
        assert!(a.lock().per_ip.is_empty());
    }

    #[tokio::test]
    async fn trusted_connections_fill_the_node_then_overflow_hears_503() {
        let a = admission(1, 0);
        let held = a.admit(IP, T).unwrap();
        held.trust();
        let extra: Vec<_> = (0..OVERFLOW).map(|_| a.admit(IP, T).unwrap()).collect();
        assert!(extra.iter().all(|t| !t.has_slot()));
        assert_eq!(a.admit(IP, T).err(), Some(Refused::Full));
        drop(extra);
        assert!(a.admit(IP, T).is_ok());
    }

    #[tokio::test]
    async fn untrusted_connections_per_address_are_capped() {
        let a = admission(100, 2);
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let one = a.admit(IP, T).unwrap();
        let _two = a.admit(IP, T).unwrap();
        assert_eq!(a.admit(IP, T).err(), Some(Refused::PerIp));
        assert!(a.admit(other, T).is_ok(), "another address is not affected");
        one.trust();
        assert!(a.admit(IP, T).is_ok(), "a trusted connection no longer counts");
    }

    fn behind_proxy(limits: crate::config::Limits) -> Arc<Admission> {
        let proxies = crate::proxy::TrustedProxies::new(&["10.0.0.1".into()], crate::config::ClientAddressHeader::XForwardedFor, false).unwrap();
        Admission::behind(&limits, proxies, Arc::new(Metrics::new()))
    }

    #[tokio::test]
    async fn a_trusted_proxy_counts_against_its_clients_not_itself() {
        let a = behind_proxy(crate::config::Limits { max_unauthenticated_per_ip: 2, ..Default::default() });
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let (c1, c2): (IpAddr, IpAddr) = ("198.51.100.1".parse().unwrap(), "198.51.100.2".parse().unwrap());
        // Ten connections from the balancer: none counted yet.
        let tickets: Vec<_> = (0..10).map(|_| a.admit(proxy, T).unwrap()).collect();
        assert!(a.lock().per_ip.is_empty());
        tickets[0].readdress(c1).unwrap();
        tickets[1].readdress(c1).unwrap();
        assert_eq!(tickets[2].readdress(c1), Err(Refused::PerIp), "the client's own limit holds behind the balancer");
        tickets[2].readdress(c2).unwrap();
        // A kept-alive upstream connection now carries another client: it moves.
        tickets[1].readdress(c2).unwrap();
        assert_eq!(a.lock().per_ip.get(&c1), Some(&1));
        assert_eq!(a.lock().per_ip.get(&c2), Some(&2));
        tickets[0].trust();
        assert_eq!(a.lock().per_ip.get(&c1), None, "authenticated: no longer counted");
        drop(tickets);
        assert!(a.lock().per_ip.is_empty());
        assert_eq!(a.admitted(), 0);
    }

    #[tokio::test]
    async fn connections_over_a_rate_are_let_in_only_to_be_told() {
        let limits = crate::config::Limits { connection_rate_per_ip: 0.001, connection_burst_per_ip: 2, ..Default::default() };
        let a = behind_proxy(limits);
        let (one, two) = (a.admit(IP, T).unwrap(), a.admit(IP, T).unwrap());
        assert!(one.has_slot() && two.has_slot());
        let third = a.admit(IP, T).unwrap();
        assert!(!third.has_slot());
        assert_eq!(third.refused(), Some(Refused::RatePerIp));
        // Another address has its own bucket; an IPv6 client counts by its /64.
        assert!(a.admit("127.0.0.2".parse().unwrap(), T).unwrap().has_slot());
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let _held = (a.admit(v6a, T).unwrap(), a.admit(v6b, T).unwrap());
        assert_eq!(a.admit("2001:db8:1:2::7".parse().unwrap(), T).unwrap().refused(), Some(Refused::RatePerIp));
        assert!(a.admit("2001:db8:1:3::1".parse().unwrap(), T).unwrap().has_slot());
        // The balancer's connections are not rated; their clients are, when known.
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let via: Vec<_> = (0..5).map(|_| a.admit(proxy, T).unwrap()).collect();
        assert!(via.iter().all(|t| t.has_slot()));
        assert_eq!(via[0].readdress(IP), Err(Refused::RatePerIp), "this client used its burst directly");
        // Node-wide rate.
        let total = admission_with(crate::config::Limits { connection_rate: 0.001, connection_burst: 3, ..Default::default() });
        let ok: Vec<_> = (0..3).map(|i| total.admit(IpAddr::V4([192, 0, 2, i].into()), T).unwrap()).collect();
        assert!(ok.iter().all(|t| t.has_slot()));
        let over = total.admit("192.0.2.99".parse().unwrap(), T).unwrap();
        assert_eq!(over.refused(), Some(Refused::Rate));
        let overflow: Vec<_> = (0..OVERFLOW - 1).map(|_| total.admit(IP, T).unwrap()).collect();
        assert_eq!(total.admit(IP, T).err(), Some(Refused::Rate), "past the overflow: closed at accept");
        drop((over, overflow));
        assert_eq!(total.lock().overflow, 0);
    }

    fn admission_with(limits: crate::config::Limits) -> Arc<Admission> {
        Admission::new(&limits, Arc::new(Metrics::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_deadline_expires_and_can_be_moved() {
        let a = admission(10, 0);
        let t = a.admit(IP, Duration::from_secs(5)).unwrap();
        t.set_deadline(None);
        assert!(tokio::time::timeout(Duration::from_secs(60), t.expired()).await.is_err(), "no deadline while a request runs");
        t.set_deadline(Some(Instant::now() + Duration::from_secs(3)));
        let started = Instant::now();
        t.expired().await;
        assert_eq!(started.elapsed().as_secs(), 3);
    }
}
