//! Topic patterns, the one syntax for every list of topics in the
//! configuration and in tokens (role rights, token claims, history topics):
//!
//! | pattern | matches |
//! |---|---|
//! | `*` | every topic |
//! | `com.example.orders` | exactly that topic |
//! | `com.example.orders.*` | topics starting with `com.example.orders.` |
//! | `com.example.orders*` | topics starting with `com.example.orders` |
//! | `com..update` | `com.X.update` for any one component `X` |

use telegraphy_wamp::{uri, MatchPolicy, UriKind, UriRules};

/// One permission pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// Every topic.
    All,
    /// One exact topic.
    Exact(String),
    /// Topics starting with this string.
    Prefix(String),
    /// Topics with as many components, equal in each non-empty one.
    Wildcard(String),
}

/// A permission pattern that does not parse; the message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

impl Pattern {
    /// Parses the pattern syntax; errors say what is wrong.
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        if s == "*" {
            return Ok(Pattern::All);
        }
        if let Some(prefix) = s.strip_suffix('*') {
            if prefix.contains('*') || prefix.is_empty() {
                return Err(PatternError(format!("pattern `{s}`: `*` may only end a pattern (or be the whole pattern)")));
            }
            let check = prefix.strip_suffix('.').unwrap_or(prefix);
            if !uri::is_valid(check, UriRules::Loose, UriKind::Concrete) {
                return Err(PatternError(format!("pattern `{s}`: `{prefix}` is not a valid URI prefix")));
            }
            return Ok(Pattern::Prefix(prefix.to_string()));
        }
        if s.contains('*') {
            return Err(PatternError(format!("pattern `{s}`: `*` may only end a pattern")));
        }
        if uri::is_valid(s, UriRules::Loose, UriKind::Concrete) {
            return Ok(Pattern::Exact(s.to_string()));
        }
        if uri::is_valid(s, UriRules::Loose, UriKind::Pattern(MatchPolicy::Wildcard)) {
            return Ok(Pattern::Wildcard(s.to_string()));
        }
        Err(PatternError(format!("pattern `{s}` is not a topic, a prefix ending in `*`, a wildcard like `a..c`, or `*`")))
    }

    /// Whether a concrete topic matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::All => true,
            Pattern::Exact(t) => t == topic,
            Pattern::Prefix(p) => topic.starts_with(p.as_str()),
            Pattern::Wildcard(w) => MatchPolicy::Wildcard.matches(w, topic),
        }
    }
}

/// The pattern as it is written (parses back to itself).
impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::All => f.write_str("*"),
            Pattern::Exact(t) | Pattern::Wildcard(t) => f.write_str(t),
            Pattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// A set of patterns: a topic is in the set when any pattern matches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSet(pub Vec<Pattern>);

impl PatternSet {
    /// Parses every pattern.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<PatternSet, PatternError> {
        patterns.iter().map(|p| Pattern::parse(p.as_ref())).collect::<Result<_, _>>().map(PatternSet)
    }

    /// Whether a concrete topic matches any pattern.
    pub fn matches(&self, topic: &str) -> bool {
        self.0.iter().any(|p| p.matches(topic))
    }

    /// Whether a pattern other than `*` matches the topic. The router's
    /// own URIs (`wamp.`: the meta API) are reached only by patterns that
    /// name them, never by `*` alone.
    pub fn names(&self, topic: &str) -> bool {
        self.0.iter().any(|p| !matches!(p, Pattern::All) && p.matches(topic))
    }

    /// Whether the set is empty (matches nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
