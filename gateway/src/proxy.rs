//! The client's address behind load balancers and reverse proxies.
//!
//! A connection's TCP peer is the client, unless the peer is one of
//! `proxies.trusted` (CIDRs). Then, and only then:
//!
//! * with `proxies.proxy_protocol`, the connection must open with a PROXY
//!   protocol header (v1 text or v2 binary, as HAProxy, AWS NLB and nginx's
//!   stream module send it), whose source address is the client
//!   ([`read_proxy_header`]; a trusted peer that sends none is closed, so a
//!   misconfigured balancer cannot let clients forge one);
//! * the header named by `proxies.header` (`X-Forwarded-For` or RFC 7239
//!   `Forwarded`) is walked from its right end, skipping addresses that are
//!   themselves trusted proxies; the first untrusted one is the client
//!   ([`TrustedProxies::client_address`]).
//!
//! A header or PROXY line from any other peer is never read: a client
//! cannot choose the address its limits and logs see. Only one header is
//! read, because a balancer that appends to one passes the other through
//! from the client untouched.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use ipnet::IpNet;
use tokio::io::AsyncReadExt;

pub(crate) use crate::config::ClientAddressHeader;

/// `proxies.trusted`, parsed; and what to read from them.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ClientAddressHeader,
    proxy_protocol: bool,
}

/// A `proxies.trusted` entry that is neither an address nor a CIDR.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an IP address or a CIDR block (e.g. 10.0.0.0/8, 192.168.1.7, fd00::/8)")]
pub(crate) struct BadNetwork(String);

impl TrustedProxies {
    /// Parses the configured networks; single addresses count as /32 or /128.
    pub(crate) fn new(trusted: &[String], header: ClientAddressHeader, proxy_protocol: bool) -> Result<TrustedProxies, BadNetwork> {
        let nets = trusted
            .iter()
            .map(|s| {
                let s = s.trim();
                s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| BadNetwork(s.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets, header, proxy_protocol })
    }

    /// Whether `ip` is a trusted proxy.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether connections from `peer` must open with a PROXY protocol header.
    pub(crate) fn expects_proxy_header(&self, peer: IpAddr) -> bool {
        self.proxy_protocol && self.trusts(peer)
    }

    /// The client behind `peer` for one HTTP request: `peer` itself unless
    /// it is trusted, else the rightmost address in the configured header
    /// that is not a trusted proxy. An entry that cannot be read (`unknown`,
    /// an obfuscated `_name`, garbage) ends the walk at the last trusted hop.
    pub(crate) fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let name = match self.header {
            ClientAddressHeader::XForwardedFor => "x-forwarded-for",
            ClientAddressHeader::Forwarded => "forwarded",
            ClientAddressHeader::None => return peer,
        };
        // Several header lines form one list, in order.
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all(name) {
            let Ok(value) = value.to_str() else {
                return peer;
            };
            hops.extend(value.split(','));
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            let parsed = match self.header {
                ClientAddressHeader::Forwarded => forwarded_for(hop).and_then(parse_node),
                _ => parse_node(hop),
            };
            let Some(ip) = parsed else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The `for=` value of one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then(|| v.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:5678`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = node.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    node.strip_prefix('[')?.strip_suffix(']')?.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// Why a trusted peer's PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// The connection did not start with `PROXY ` or the v2 signature.
    #[error("the connection did not open with a PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    /// Reading failed (the peer closed, reset).
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// The v2 binary signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (the spec's limit).
const V1_MAX: usize = 107;

/// Reads one PROXY protocol header (v1 or v2) from the start of `stream`,
/// not a byte beyond it, and returns the client's address: the header's
/// source, or `None` for a `LOCAL` (v2) / `UNKNOWN` (v1) header, which a
/// balancer sends for its own health checks.
pub(crate) async fn read_proxy_header<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 16];
    stream.read_exact(&mut buf[..6]).await?;
    if &buf[..6] == b"PROXY " {
        // v1: a text line; read it byte by byte so that nothing after the
        // CRLF is consumed (it is the client's first request).
        buf.truncate(6);
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed("a v1 header longer than 107 bytes".into()));
            }
            stream.read_exact(&mut byte).await?;
            buf.push(byte[0]);
        }
        let header = ppp::v1::Header::try_from(&buf[..]).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if buf[..6] != V2_SIGNATURE[..6] {
        return Err(ProxyHeaderError::Missing);
    }
    stream.read_exact(&mut buf[6..16]).await?;
    if buf[..12] != V2_SIGNATURE[..] {
        return Err(ProxyHeaderError::Missing);
    }
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    buf.resize(16 + len, 0);
    stream.read_exact(&mut buf[16..]).await?;
    let header = ppp::v2::Header::try_from(&buf[..]).map_err(|e| ProxyHeaderError::Malformed(e.to_string()))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        // A Unix-socket or unspecified source tells nothing about the client.
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(trusted: &[&str], header: ClientAddressHeader) -> TrustedProxies {
        TrustedProxies::new(&trusted.iter().map(|s| s.to_string()).collect::<Vec<_>>(), header, false).unwrap()
    }

    fn headers(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(name, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let p = proxies(&["10.0.0.0/8"], ClientAddressHeader::XForwardedFor);
        let forged = headers("x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(p.client_address(ip("203.0.113.9"), &forged), ip("203.0.113.9"));
        // No proxy trusted at all: the same.
        let none = proxies(&[], ClientAddressHeader::XForwardedFor);
        assert_eq!(none.client_address(ip("10.1.1.1"), &forged), ip("10.1.1.1"));
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right_past_trusted_hops() {
        let p = proxies(&["10.0.0.0/8", "192.168.7.7"], ClientAddressHeader::XForwardedFor);
        // The client forged the leftmost entry; the balancer appended the real one.
        let h = headers("x-forwarded-for", &["6.6.6.6, 198.51.100.4", "192.168.7.7"]);
        assert_eq!(p.client_address(ip("10.0.0.2"), &h), ip("198.51.100.4"));
        // Ports and brackets as some proxies write them.
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("x-forwarded-for", &["198.51.100.4:5555"])), ip("198.51.100.4"));
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("x-forwarded-for", &["[2001:db8::7]:443"])), ip("2001:db8::7"));
        // Every hop trusted (an internal health check): the leftmost one.
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("x-forwarded-for", &["10.9.9.9"])), ip("10.9.9.9"));
        // No header: the balancer itself.
        assert_eq!(p.client_address(ip("10.0.0.2"), &HeaderMap::new()), ip("10.0.0.2"));
        // Garbage stops the walk at the last trusted hop, never believing what is left of it.
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("x-forwarded-for", &["1.1.1.1, nonsense"])), ip("10.0.0.2"));
        // The other header is not read.
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("forwarded", &["for=1.1.1.1"])), ip("10.0.0.2"));
    }

    #[test]
    fn forwarded_is_read_per_rfc_7239() {
        let p = proxies(&["10.0.0.0/8"], ClientAddressHeader::Forwarded);
        let h = headers("forwarded", &["for=6.6.6.6, For=\"[2001:db8:cafe::17]:4711\";proto=https", "for=10.0.0.3;by=10.0.0.2"]);
        assert_eq!(p.client_address(ip("10.0.0.2"), &h), ip("2001:db8:cafe::17"));
        // Obfuscated and unknown identifiers end the walk.
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("forwarded", &["for=_hidden"])), ip("10.0.0.2"));
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("forwarded", &["for=unknown, for=10.0.0.5"])), ip("10.0.0.5"));
        assert_eq!(p.client_address(ip("10.0.0.2"), &headers("x-forwarded-for", &["1.1.1.1"])), ip("10.0.0.2"));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let p = proxies(&["127.0.0.1"], ClientAddressHeader::XForwardedFor);
        assert!(p.trusts(ip("::ffff:127.0.0.1")));
        assert_eq!(p.client_address(ip("::ffff:127.0.0.1"), &headers("x-forwarded-for", &["::ffff:8.8.8.8"])), ip("8.8.8.8"));
        assert!(TrustedProxies::new(&["10.0.0.0/33".into()], ClientAddressHeader::None, false).is_err());
        assert!(TrustedProxies::new(&["proxy.internal".into()], ClientAddressHeader::None, false).is_err());
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_proxy_header(&mut cursor).await;
        let pos = cursor.position() as usize;
        (r, bytes[pos..].to_vec())
    }

    #[tokio::test]
    async fn proxy_headers_v1_and_v2_are_read_to_their_end_and_no_further() {
        let (r, rest) = read(b"PROXY TCP4 198.51.100.4 10.0.0.1 5555 8080\r\nGET /ws HTTP/1.1\r\n").await;
        assert_eq!(r.unwrap(), Some("198.51.100.4:5555".parse().unwrap()));
        assert_eq!(rest, b"GET /ws HTTP/1.1\r\n");
        let (r, _) = read(b"PROXY UNKNOWN\r\nGET").await;
        assert_eq!(r.unwrap(), None);

        let v2 = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            ("[2001:db8::9]:4000".parse::<SocketAddr>().unwrap(), "[2001:db8::1]:8080".parse::<SocketAddr>().unwrap()),
        )
        .write_tlv(ppp::v2::Type::NoOp, b"pad".as_slice())
        .unwrap()
        .build()
        .unwrap();
        let mut bytes = v2.clone();
        bytes.extend_from_slice(b"GET /");
        let (r, rest) = read(&bytes).await;
        assert_eq!(r.unwrap(), Some("[2001:db8::9]:4000".parse().unwrap()));
        assert_eq!(rest, b"GET /");

        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Stream,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(read(&local).await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn what_is_not_a_proxy_header_is_refused() {
        assert!(matches!(read(b"GET /ws HTTP/1.1\r\n\r\n").await.0, Err(ProxyHeaderError::Missing)));
        assert!(matches!(read(b"PROXY TCP4 1.2.3.4 nonsense\r\n").await.0, Err(ProxyHeaderError::Malformed(_))));
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert!(matches!(read(long.as_bytes()).await.0, Err(ProxyHeaderError::Malformed(_))));
        assert!(matches!(read(b"\r\n\r\n\0\r\nQUIX\n\x21\x11\0\0").await.0, Err(ProxyHeaderError::Missing)));
        // The peer closed half-way.
        assert!(matches!(read(b"PROXY TCP4 1.2").await.0, Err(ProxyHeaderError::Io(_))));
    }
}
