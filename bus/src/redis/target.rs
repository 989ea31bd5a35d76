//! Where a Redis bus finds its Redis: one server, a Redis Cluster, or the
//! primary a set of Sentinels names.
//!
//! * `redis://[user:pass@]host:port/db` (`rediss://` over TLS): one server.
//! * `redis+cluster://[user:pass@]host1:port,host2:port` (`rediss+cluster://`):
//!   a Redis Cluster, found from any of the listed nodes (the seeds); the
//!   credentials and TLS settings hold for every node of the cluster.
//! * `redis+sentinel://[user:pass@]s1:26379,s2:26379/NAME[/db]`
//!   (`rediss+sentinel://`): the primary the Sentinels know as `NAME`,
//!   asked again at every (re)connect. The credentials are the primary's;
//!   the Sentinels are asked with them too (Sentinels that share the
//!   password, as common charts set them up), and without them when a
//!   Sentinel has no password.

use crate::{redact, BusError, BusTls};

/// Where the bus's Redis is.
pub(crate) enum Target {
    /// One Redis server.
    Single(redis::Client),
    /// A Redis Cluster: one URL per seed node.
    Cluster(Cluster),
    /// A primary found through Sentinel.
    Sentinel(Sentinel),
}

/// A Redis Cluster's seeds and how to reach any of its nodes.
pub(crate) struct Cluster {
    /// `redis://user:pass@host:port/` per seed.
    pub(crate) seeds: Vec<String>,
    node: NodeUrl,
    tls: BusTls,
}

/// The Sentinels and the name of the primary they watch.
pub(crate) struct Sentinel {
    /// Per Sentinel: its URL with the credentials, and without them.
    sentinels: Vec<(String, String)>,
    /// The primary's name in the Sentinels' configuration.
    pub(crate) name: String,
    db: i64,
    node: NodeUrl,
    tls: BusTls,
}

/// How to write a node's URL from its address (scheme and credentials of the bus URL).
#[derive(Clone)]
struct NodeUrl {
    scheme: &'static str,
    userinfo: String,
}

impl NodeUrl {
    fn at(&self, host: &str, port: u16, db: i64) -> String {
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        format!("{}://{}{host}:{port}/{db}", self.scheme, self.userinfo)
    }
}

/// A client for `url`; a `rediss://` one trusts `tls.ca_pem` besides the
/// system's roots and shows the client certificate when one is set.
/// `resp3` asks for the protocol version whose push messages carry
/// sharded pub/sub.
pub(crate) fn client(url: &str, tls: &BusTls, resp3: bool) -> Result<redis::Client, BusError> {
    use redis::IntoConnectionInfo as _;
    let invalid = |e: redis::RedisError| BusError::InvalidUrl(format!("bus `{}`: {e}", redact(url)));
    let mut info = url.into_connection_info().map_err(invalid)?;
    if resp3 {
        info.redis.protocol = redis::ProtocolVersion::RESP3;
    }
    if !crate::is_tls_url(url) {
        return redis::Client::open(info).map_err(invalid);
    }
    crate::install_crypto_provider();
    redis::Client::build_with_tls(info, certificates(tls)).map_err(invalid)
}

/// The same server as `client`, speaking RESP3.
pub(crate) fn with_resp3(client: &redis::Client) -> Result<redis::Client, redis::RedisError> {
    let mut info = client.get_connection_info().clone();
    info.redis.protocol = redis::ProtocolVersion::RESP3;
    redis::Client::open(info)
}

pub(crate) fn certificates(tls: &BusTls) -> redis::TlsCertificates {
    let client_tls = match (&tls.client_cert_pem, &tls.client_key_pem) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
        _ => None,
    };
    redis::TlsCertificates { client_tls, root_cert: tls.ca_pem.clone() }
}

impl Target {
    /// Reads the bus URL.
    pub(crate) fn parse(url: &str, tls: &BusTls) -> Result<Target, BusError> {
        let invalid = |e: String| BusError::InvalidUrl(format!("bus `{}`: {e}", redact(url)));
        let (scheme, _) = url.split_once("://").ok_or_else(|| invalid("not a URL".into()))?;
        let node_scheme = if scheme.starts_with("rediss") { "rediss" } else { "redis" };
        match scheme {
            "redis" | "rediss" => Ok(Target::Single(client(url, tls, false)?)),
            "redis+cluster" | "rediss+cluster" => {
                let split = crate::split_hosts(url).map_err(invalid)?;
                let path = split.tail.trim_start_matches('/');
                if !(path.is_empty() || path == "0") {
                    return Err(invalid("a Redis Cluster has only database 0; leave the path empty".into()));
                }
                let node = NodeUrl { scheme: node_scheme, userinfo: split.userinfo.clone() };
                let seeds: Vec<String> = split.hosts.iter().map(|h| format!("{node_scheme}://{}{h}/0", split.userinfo)).collect();
                for seed in &seeds {
                    client(seed, tls, true)?;
                }
                Ok(Target::Cluster(Cluster { seeds, node, tls: tls.clone() }))
            }
            "redis+sentinel" | "rediss+sentinel" => {
                let split = crate::split_hosts(url).map_err(invalid)?;
                let mut path = split.tail.trim_start_matches('/').split('/');
                let name = path.next().unwrap_or("").to_string();
                if name.is_empty() {
                    return Err(invalid("name the primary after the Sentinels: redis+sentinel://HOST:26379,HOST2:26379/NAME".into()));
                }
                let db = match path.next() {
                    None | Some("") => 0,
                    Some(d) => d.parse().map_err(|_| invalid(format!("`{d}` is not a database number")))?,
                };
                let sentinels: Vec<(String, String)> =
                    split.hosts.iter().map(|h| (format!("{node_scheme}://{}{h}/0", split.userinfo), format!("{node_scheme}://{h}/0"))).collect();
                for (with, without) in &sentinels {
                    client(with, tls, false)?;
                    client(without, tls, false)?;
                }
                Ok(Target::Sentinel(Sentinel {
                    sentinels,
                    name,
                    db,
                    node: NodeUrl { scheme: node_scheme, userinfo: split.userinfo },
                    tls: tls.clone(),
                }))
            }
            _ => Err(invalid("not a Redis URL".into())),
        }
    }

    /// The address the supervisor probes while Redis refuses connections
    /// (one server only: with several, each connect tries them all).
    pub(crate) fn probe(&self) -> Option<(String, u16)> {
        let Target::Single(client) = self else { return None };
        match &client.get_connection_info().addr {
            redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
            _ => None,
        }
    }
}

impl Cluster {
    /// The first seed's host: what a node announcing no address means.
    pub(crate) fn seed_host(&self) -> String {
        match self.seeds.first().map(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str())) {
            Some(Ok(redis::ConnectionInfo { addr: redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. }, .. })) => host,
            _ => String::new(),
        }
    }

    /// A client for the node at `host:port`, speaking RESP3 (sharded pub/sub
    /// arrives as push messages).
    pub(crate) fn node(&self, host: &str, port: u16) -> Result<redis::Client, BusError> {
        client(&self.node.at(host, port, 0), &self.tls, true)
    }

    /// The client redis-rs routes commands with (MOVED, ASK, failover).
    pub(crate) fn routing_client(&self, options: &crate::BusOptions) -> Result<redis::cluster::ClusterClient, BusError> {
        let invalid = |e: redis::RedisError| BusError::InvalidUrl(format!("bus: {e}"));
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.seeds.clone())
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.connect_timeout)
            // A publish to a shard without a primary fails after a short
            // wait (the caller reports it) instead of hanging through a failover.
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500);
        if crate::is_tls_url(&self.seeds[0]) {
            crate::install_crypto_provider();
            builder = builder.certs(certificates(&self.tls));
        }
        builder.build().map_err(invalid)
    }
}

/// Why the Sentinels named no primary.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SentinelError {
    /// No Sentinel answered.
    #[error("no Sentinel answered ({0})")]
    NoSentinel(String),
    /// The Sentinels that answered do not know the name.
    #[error("no Sentinel knows a primary named `{0}` (check the name after the Sentinels' addresses in the bus URL)")]
    UnknownName(String),
}

/// Whether a Sentinel refused the credentials it was given (it has none, or others).
fn refused_credentials(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    e.kind() == redis::ErrorKind::AuthenticationFailed || text.contains("AUTH") || text.contains("WRONGPASS") || text.contains("password")
}

impl Sentinel {
    /// Asks the Sentinels in turn for the primary's address; a client for it.
    pub(crate) async fn primary(&self, timeout: std::time::Duration) -> Result<redis::Client, super::SessionError> {
        let mut errors = Vec::new();
        let mut answered = false;
        // When every Sentinel refused the credentials, that is the answer.
        let mut refused: Option<redis::RedisError> = None;
        let mut others = false;
        for (with, without) in &self.sentinels {
            let url = with;
            let ask = |url: &str| {
                let one = client(url, &self.tls, false);
                async move {
                    let one = one.map_err(|e| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bus URL", e.to_string())))?;
                    let mut conn = one.get_multiplexed_async_connection().await?;
                    redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(&self.name).query_async::<Option<(String, u16)>>(&mut conn).await
                }
            };
            let asked = async {
                match ask(with).await {
                    // A Sentinel without a password refuses the credentials: ask it without.
                    Err(e) if with != without && refused_credentials(&e) => ask(without).await,
                    answer => answer,
                }
            };
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok(Some((host, port)))) => {
                    return client(&self.node.at(&host, port, self.db), &self.tls, false).map_err(|e| super::SessionError::Setup(e.to_string()));
                }
                Ok(Ok(None)) => answered = true,
                Ok(Err(e)) => {
                    errors.push(format!("{}: {e}", redact(url)));
                    if refused_credentials(&e) {
                        refused = Some(e);
                    } else {
                        others = true;
                    }
                }
                Err(_) => {
                    errors.push(format!("{}: no answer within {timeout:?}", redact(url)));
                    others = true;
                }
            }
        }
        if let (Some(e), false, false) = (refused, others, answered) {
            return Err(super::SessionError::Redis(redis::RedisError::from((
                redis::ErrorKind::AuthenticationFailed,
                "the Sentinels refused the credentials (the bus URL's user and password are used for the Sentinels and the primary)",
                e.to_string(),
            ))));
        }
        let why = if answered { SentinelError::UnknownName(self.name.clone()) } else { SentinelError::NoSentinel(errors.join("; ")) };
        Err(super::SessionError::Setup(why.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target, String> {
        Target::parse(url, &BusTls::default()).map_err(|e| e.to_string())
    }

    fn error(url: &str) -> String {
        parse(url).err().unwrap_or_default()
    }

    #[test]
    fn url_forms() {
        let Ok(Target::Cluster(c)) = parse("redis+cluster://u:pw@h1:7000,h2:7001") else { panic!("cluster") };
        assert_eq!(c.seeds, ["redis://u:pw@h1:7000/0", "redis://u:pw@h2:7001/0"]);
        assert_eq!(c.node.at("10.0.0.5", 7002, 0), "redis://u:pw@10.0.0.5:7002/0");
        assert_eq!(c.node.at("::1", 7002, 0), "redis://u:pw@[::1]:7002/0");
        let Ok(Target::Cluster(c)) = parse("rediss+cluster://h1:7000/") else { panic!("tls cluster") };
        assert_eq!(c.seeds, ["rediss://h1:7000/0"]);
        assert!(error("redis+cluster://h1:7000/3").contains("only database 0"));
        let Ok(Target::Sentinel(s)) = parse("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/2") else { panic!("sentinel") };
        assert_eq!((s.name.as_str(), s.db), ("mymaster", 2));
        assert_eq!(
            s.sentinels,
            [
                ("redis://:pw@s1:26379/0".to_string(), "redis://s1:26379/0".to_string()),
                ("redis://:pw@s2:26380/0".to_string(), "redis://s2:26380/0".to_string())
            ]
        );
        assert_eq!(s.node.at("10.0.0.7", 6379, s.db), "redis://:pw@10.0.0.7:6379/2");
        assert!(error("redis+sentinel://s1:26379").contains("name the primary"));
        assert!(error("redis+sentinel://s1:26379/m/x").contains("not a database number"));
        assert!(error("redis+cluster://h1:7000,,h2:1").contains("empty host"));
        assert!(matches!(parse("redis://h:6379/0"), Ok(Target::Single(_))));
    }
}
