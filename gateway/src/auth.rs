//! Authentication: who a session is (authid, authrole) and what it may do.
//!
//! * **ticket** (browsers): the ticket is a short-lived JWT minted by the
//!   web-app, verified with a shared secret (HS256) or a public key (RS256,
//!   EdDSA) so the gateway never needs a signing key. Claims: `sub` → authid,
//!   `role` → authrole (default `user`), `exp` (required), optional `aud`,
//!   `iss`, `nbf`, and optional `subscribe` / `publish` pattern lists that
//!   narrow the role's rights.
//!   `exp` is exact: an expired token gets no WELCOME and a session ends at
//!   its token's `exp`; `auth.jwt_leeway` is clock skew on `nbf` only. An
//!   optional `realm` claim (a string or a list) binds the token to realms.
//! * **wampcra** (services holding a secret): HMAC-SHA256 challenge-response.
//!   A known and an unknown authid are answered alike (the same challenge
//!   shape with a plausible role, the same errors, the same work), with
//!   nonces from the operating system's cryptographic generator.
//! * **anonymous**: only when configured, with its own role.
//!
//! Tokens and secrets never reach the logs: failures carry a reason, not the input.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;
use telegraphy_wamp::codes::uri as err;

use crate::authz::{Actions, PatternSet, Permissions};
use crate::config::{Config, ConfigError, RoleConfig};

/// A role's rights, parsed once at startup.
#[derive(Debug, Clone)]
pub(crate) struct Role {
    patterns: Actions<PatternSet>,
    /// Publishes per second per session (0: no limit).
    pub publish_rate: f64,
    /// Burst above the rate.
    pub publish_burst: u32,
    /// Calls per second per session (0: no limit).
    pub call_rate: f64,
    /// Burst above the rate.
    pub call_burst: u32,
    /// Every call discloses the caller.
    pub disclose_caller: bool,
    publish_options: bool,
    /// The role's rights with no token claims, shared by every such session
    /// (one allocation per role instead of one per session).
    shared: Arc<Permissions>,
}

/// A successfully authenticated session.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// `authid`.
    pub authid: String,
    /// `authrole`.
    pub authrole: String,
    /// `ticket`, `wampcra` or `anonymous`.
    pub authmethod: &'static str,
    /// `jwt` or `static`.
    pub authprovider: &'static str,
    /// What the session may do.
    pub permissions: Arc<Permissions>,
    /// The role (for the rate limit).
    pub(crate) role: Role,
    /// When the credentials expire (token `exp`).
    pub expires_at: Option<SystemTime>,
    /// A display name (the token's `name` claim), for presence.
    pub name: Option<String>,
}

/// The longest display name kept (longer ones are cut, on a character boundary).
pub(crate) const MAX_NAME: usize = 100;

/// A token's `name` claim as kept: trimmed, cut to [`MAX_NAME`] bytes, none if empty.
fn display_name(name: Option<String>) -> Option<String> {
    let name = name?;
    let mut name = name.trim();
    if name.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name = &name[..end];
    }
    (!name.is_empty()).then(|| name.to_string())
}

/// A refused session: the ABORT reason, a message a developer can act on,
/// and a fixed word for the metric label.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthFailure {
    /// ABORT reason URI.
    pub uri: &'static str,
    /// What happened and what to do.
    pub message: String,
    /// Metric label (`telegraphy_auth_failures_total{reason}`).
    pub reason: &'static str,
}

fn failure(reason: &'static str, message: impl Into<String>) -> AuthFailure {
    AuthFailure { uri: err::AUTHENTICATION_FAILED, message: message.into(), reason }
}

struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

/// The claims Telegraphy reads from a token. `sub` and `exp` are required,
/// but optional here so that a token without them is refused as
/// `missing_claims`, not `malformed`.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    realm: Option<OneOrMany>,
    #[serde(default)]
    subscribe: Option<Vec<String>>,
    #[serde(default)]
    publish: Option<Vec<String>>,
    #[serde(default)]
    call: Option<Vec<String>>,
    #[serde(default)]
    register: Option<Vec<String>>,
    /// A display name (presence shows it beside the authid).
    #[serde(default)]
    name: Option<String>,
}

/// A claim that is a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains(&self, s: &str) -> bool {
        match self {
            OneOrMany::One(one) => one == s,
            OneOrMany::Many(many) => many.iter().any(|m| m == s),
        }
    }
}

/// The `alg` a token's header names, if the header is readable JSON.
fn header_alg(ticket: &str) -> Option<String> {
    let header = ticket.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(String::from)
}

/// Every role the gateway knows: the built-in `anonymous` and `user`
/// (subscribe to anything; publish, call and register nothing; rate
/// limited; `user` also sees presence, of the topics it may read),
/// overridden or extended by `[roles.NAME]`. In dev mode `anonymous` may
/// publish, call and register anything too.
fn effective_roles(config: &Config) -> BTreeMap<String, RoleConfig> {
    let builtin = |all: bool| {
        let everything = if all { vec!["*".to_string()] } else { Vec::new() };
        RoleConfig {
            subscribe: vec!["*".into()],
            publish: everything.clone(),
            call: everything.clone(),
            register: everything,
            publish_rate: 50.0,
            publish_burst: 100,
            call_rate: 50.0,
            call_burst: 100,
            disclose_caller: false,
            publish_options: false,
        }
    };
    let mut roles = BTreeMap::new();
    let mut user = builtin(false);
    // Signed-in users see who else is on the topics their token lets them
    // read (`telegraphy.presence.*` names them: `*` does not reach them).
    user.subscribe.push("telegraphy.presence.*".into());
    user.call.push(crate::presence::GET.into());
    roles.insert("user".to_string(), user);
    roles.insert(config.auth.anonymous_role.clone(), builtin(config.dev));
    for (name, role) in &config.roles {
        roles.insert(name.clone(), role.clone());
    }
    roles
}

/// Verifies credentials and resolves roles.
pub struct Authenticator {
    jwt: Option<Jwt>,
    /// Tokens must carry a `realm` claim.
    require_realm: bool,
    cra: HashMap<String, (String, String)>,
    /// The roles of CRA users (sorted, distinct): an unknown authid is
    /// challenged with one of them, the same one every time.
    cra_roles: Vec<String>,
    /// Derived from the configured secrets (so the same on every node and
    /// after restarts, and unknown to clients): picks unknown authids' roles
    /// and stands in for their secret.
    decoy_key: [u8; 32],
    anonymous: Option<String>,
    roles: BTreeMap<String, Role>,
}

/// What a CHALLENGE for WAMP-CRA carries and expects.
#[derive(Debug, Clone)]
pub(crate) struct CraChallenge {
    /// The authid being challenged.
    pub authid: String,
    /// The challenge string sent to the client.
    pub challenge: String,
}

impl Authenticator {
    /// Builds the authenticator from the validated config.
    pub fn from_config(config: &Config) -> Result<Authenticator, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let mut roles = BTreeMap::new();
        for (name, r) in effective_roles(config) {
            let parse = |list: &[String], action: &str| PatternSet::parse(list).map_err(|e| invalid(format!("roles.{name}.{action}: {e}")));
            let patterns = Actions {
                subscribe: parse(&r.subscribe, "subscribe")?,
                publish: parse(&r.publish, "publish")?,
                call: parse(&r.call, "call")?,
                register: parse(&r.register, "register")?,
            };
            let shared = Arc::new(Permissions::new(patterns.clone(), Actions::default(), r.publish_options));
            let role = Role {
                patterns,
                publish_rate: r.publish_rate,
                publish_burst: r.publish_burst.max(1),
                call_rate: r.call_rate,
                call_burst: r.call_burst.max(1),
                disclose_caller: r.disclose_caller,
                publish_options: r.publish_options,
                shared,
            };
            roles.insert(name, role);
        }
        let auth = &config.auth;
        let jwt = match (&auth.jwt_secret, &auth.jwt_public_key_file) {
            (Some(secret), _) => Some((DecodingKey::from_secret(secret.as_bytes()), vec![Algorithm::HS256])),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| invalid(format!("auth.jwt_public_key_file: cannot read {}: {e}", path.display())))?;
                if String::from_utf8_lossy(&pem).contains("PRIVATE KEY") {
                    return Err(invalid(format!(
                        "auth.jwt_public_key_file: {} holds a PRIVATE key; give the gateway only the public key (openssl pkey -in private.pem -pubout)",
                        path.display()
                    )));
                }
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    Some((key, vec![Algorithm::RS256]))
                } else if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                    Some((key, vec![Algorithm::EdDSA]))
                } else {
                    return Err(invalid(format!("auth.jwt_public_key_file: {} is not a PEM RSA or Ed25519 public key", path.display())));
                }
            }
            (None, None) => None,
        };
        let jwt = jwt.map(|(key, algorithms)| {
            let mut validation = Validation::new(algorithms[0]);
            validation.algorithms = algorithms;
            // The leeway is for `nbf`; `exp` is checked exactly, below.
            validation.leeway = auth.jwt_leeway.as_secs();
            validation.validate_exp = false;
            let mut required = vec![];
            validation.validate_nbf = true;
            match &auth.jwt_audience {
                Some(aud) => {
                    validation.set_audience(&[aud]);
                    required.push("aud");
                }
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &auth.jwt_issuer {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            validation.set_required_spec_claims(&required);
            Jwt { key, validation }
        });
        for user in &auth.cra {
            if !roles.contains_key(&user.role) {
                return Err(invalid(format!("auth.cra user `{}`: role `{}` is not configured (add [roles.{}])", user.authid, user.role, user.role)));
            }
        }
        let cra = auth.cra.iter().map(|u| (u.authid.clone(), (u.secret.clone(), u.role.clone()))).collect();
        let mut cra_roles: Vec<String> = auth.cra.iter().map(|u| u.role.clone()).collect();
        cra_roles.sort();
        cra_roles.dedup();
        let anonymous = config.anonymous_allowed().then(|| auth.anonymous_role.clone());
        Ok(Authenticator { jwt, require_realm: auth.require_realm_claim, cra, cra_roles, decoy_key: decoy_key(config), anonymous, roles })
    }

    /// Whether tickets (JWTs) are accepted.
    pub(crate) fn accepts_tickets(&self) -> bool {
        self.jwt.is_some()
    }

    /// The methods on offer, for error messages.
    pub(crate) fn methods(&self) -> Vec<&'static str> {
        let mut m = Vec::new();
        if self.jwt.is_some() {
            m.push("ticket");
        }
        if !self.cra.is_empty() {
            m.push("wampcra");
        }
        if self.anonymous.is_some() {
            m.push("anonymous");
        }
        m
    }

    fn session_for(
        &self,
        authid: String,
        role_name: &str,
        (method, provider): (&'static str, &'static str),
        token: Actions<Option<PatternSet>>,
        expires_at: Option<SystemTime>,
    ) -> Result<Authenticated, AuthFailure> {
        let Some(role) = self.roles.get(role_name) else {
            return Err(AuthFailure {
                uri: err::NOT_AUTHORIZED,
                message: format!(
                    "role `{role_name}` is not configured on this gateway; add [roles.{role_name}] or mint tokens with a configured role"
                ),
                reason: "unknown_role",
            });
        };
        let permissions = if token == Actions::default() {
            role.shared.clone()
        } else {
            Arc::new(Permissions::new(role.patterns.clone(), token, role.publish_options))
        };
        Ok(Authenticated {
            authid,
            authrole: role_name.to_string(),
            authmethod: method,
            authprovider: provider,
            permissions,
            role: role.clone(),
            expires_at,
            name: None,
        })
    }

    /// An anonymous session, if allowed.
    pub(crate) fn anonymous(&self, session: u64) -> Option<Result<Authenticated, AuthFailure>> {
        let role = self.anonymous.as_ref()?;
        Some(self.session_for(format!("anonymous-{session}"), role, ("anonymous", "static"), Actions::default(), None))
    }

    /// Verifies a ticket (a JWT) for a session joining `realm`.
    pub fn verify_ticket(&self, ticket: &str, realm: &str) -> Result<Authenticated, AuthFailure> {
        let Some(jwt) = &self.jwt else {
            return Err(failure("no_method", "this gateway does not accept tickets (no auth.jwt_secret or auth.jwt_public_key_file)"));
        };
        // `alg: none` and algorithms the key does not take are named as such
        // (the jsonwebtoken crate only knows the algorithms it implements).
        if let Some(alg) = header_alg(ticket) {
            if !jwt.validation.algorithms.iter().any(|a| format!("{a:?}") == alg) {
                return Err(failure("wrong_algorithm", "the token is signed with an algorithm this gateway does not accept for its key"));
            }
        }
        let data = jsonwebtoken::decode::<Claims>(ticket, &jwt.key, &jwt.validation).map_err(|e| match e.kind() {
            JwtErrorKind::ExpiredSignature => failure("expired", "the token has expired; fetch a fresh one from the web-app and reconnect"),
            JwtErrorKind::ImmatureSignature => {
                failure("not_yet_valid", "the token is not valid yet (nbf); check the clocks of the web-app and the gateway")
            }
            JwtErrorKind::InvalidSignature => {
                failure("bad_signature", "the token's signature does not verify; the web-app and the gateway must share the same secret or key pair")
            }
            JwtErrorKind::InvalidAudience => {
                failure("wrong_audience", "the token's audience (aud) is not the one this gateway expects (auth.jwt_audience)")
            }
            JwtErrorKind::InvalidIssuer => failure("wrong_issuer", "the token's issuer (iss) is not the one this gateway expects (auth.jwt_issuer)"),
            JwtErrorKind::InvalidAlgorithm => {
                failure("wrong_algorithm", "the token is signed with an algorithm this gateway does not accept for its key")
            }
            JwtErrorKind::MissingRequiredClaim(c) => failure("missing_claims", format!("the token has no `{c}` claim, which this gateway requires")),
            _ => failure("malformed", "the ticket is not a well-formed JWT with the claims sub (string) and exp (number)"),
        })?;
        let claims = data.claims;
        let missing = |c: &str| failure("missing_claims", format!("the token has no `{c}` claim, which this gateway requires"));
        let sub = claims.sub.ok_or_else(|| missing("sub"))?;
        let exp = claims.exp.ok_or_else(|| missing("exp"))?;
        // Exact, no leeway: a token is good until its `exp`, not after.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        if exp <= now {
            return Err(failure("expired", "the token has expired; fetch a fresh one from the web-app and reconnect"));
        }
        match &claims.realm {
            Some(realms) if !realms.contains(realm) => {
                return Err(failure("wrong_realm", format!("the token is not valid for realm `{realm}` (claim `realm`); mint one for this realm")))
            }
            None if self.require_realm => return Err(missing("realm")),
            _ => {}
        }
        let parse = |list: Option<Vec<String>>, name: &str| -> Result<Option<PatternSet>, AuthFailure> {
            list.map(|l| PatternSet::parse(&l).map_err(|e| failure("malformed", format!("token claim `{name}`: {e}")))).transpose()
        };
        let token = Actions {
            subscribe: parse(claims.subscribe, "subscribe")?,
            publish: parse(claims.publish, "publish")?,
            call: parse(claims.call, "call")?,
            register: parse(claims.register, "register")?,
        };
        // A far-future `exp` that no clock can represent never expires.
        let expires_at = UNIX_EPOCH.checked_add(Duration::from_secs(exp));
        let role = claims.role.unwrap_or_else(|| "user".to_string());
        let name = display_name(claims.name);
        self.session_for(sub, &role, ("ticket", "jwt"), token, expires_at).map(|a| Authenticated { name, ..a })
    }

    /// Starts WAMP-CRA for `authid` when CRA users are configured. Unknown
    /// authids get the same challenge (with one of the configured roles,
    /// always the same for one authid), so the handshake does not reveal
    /// which users exist or what their roles are.
    pub(crate) fn cra_challenge(&self, authid: &str, session: u64) -> Option<CraChallenge> {
        if self.cra.is_empty() {
            return None;
        }
        let role = match self.cra.get(authid) {
            Some((_, role)) => role.as_str(),
            None => {
                let pick = self.decoy(authid);
                let i = u64::from_le_bytes(pick[..8].try_into().expect("8 bytes")) % self.cra_roles.len() as u64;
                self.cra_roles[i as usize].as_str()
            }
        };
        let nonce: [u8; 16] = crate::node::secure_random_bytes();
        let challenge = serde_json::json!({
            "authid": authid,
            "authrole": role,
            "authmethod": "wampcra",
            "authprovider": "static",
            "session": session,
            "nonce": nonce.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "timestamp": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
        .to_string();
        Some(CraChallenge { authid: authid.to_string(), challenge })
    }

    /// A keyed hash of `authid` (unknown authids' role and stand-in secret).
    fn decoy(&self, authid: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.decoy_key).expect("HMAC takes any key length");
        mac.update(authid.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a WAMP-CRA signature: base64(HMAC-SHA256(secret, challenge)).
    /// Every failure gets the same answer, and an unknown authid costs the
    /// same work as a known one (its signature is checked against a secret
    /// nobody has).
    pub(crate) fn verify_cra(&self, challenge: &CraChallenge, signature: &str) -> Result<Authenticated, AuthFailure> {
        let refused = || failure("cra_failed", "the signature does not match; check the authid and the secret");
        let known = self.cra.get(&challenge.authid);
        // Computed for every authid, used for unknown ones: the same work either way.
        let decoy = self.decoy(&challenge.authid);
        let secret: &[u8] = match known {
            Some((secret, _)) => secret.as_bytes(),
            None => &decoy,
        };
        let sig = base64::engine::general_purpose::STANDARD.decode(signature.trim()).unwrap_or_default();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(challenge.challenge.as_bytes());
        let matches = mac.verify_slice(&sig).is_ok();
        match known {
            Some((_, role)) if matches => self.session_for(challenge.authid.clone(), role, ("wampcra", "static"), Actions::default(), None),
            _ => Err(refused()),
        }
    }
}

/// The key behind unknown authids' answers: a hash of every configured
/// secret, so every node of a cluster (same config) answers an unknown
/// authid the same way, and no client can compute it.
fn decoy_key(config: &Config) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = Sha256::new();
    h.update(b"telegraphy wampcra decoy v1\0");
    for user in &config.auth.cra {
        h.update(user.authid.as_bytes());
        h.update([0]);
        h.update(user.secret.as_bytes());
        h.update([0]);
    }
    if let Some(secret) = &config.auth.jwt_secret {
        h.update(secret.as_bytes());
    }
    h.finalize().into()
}

/// Computes a WAMP-CRA signature (clients, tests).
pub fn cra_sign(secret: &str, challenge: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(challenge.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
