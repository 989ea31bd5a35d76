"""Topic URI rules, as the gateway applies them (`wamp/src/uri.rs`, loose
rules): dot-separated components, each non-empty and free of whitespace,
`.` and `#`. Topics under `wamp.` and `telegraphy.presence.` are reserved for the
router."""

from .errors import InvalidInput

# Rust's `char::is_whitespace` (the Unicode White_Space property). Python's
# str.isspace() also counts U+001C..U+001F, which the gateway accepts.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


def _component_ok(component: str) -> bool:
    return all(ch not in _WHITESPACE and ch != "#" for ch in component)


def is_valid_topic(topic) -> bool:
    """Whether `topic` is a concrete topic URI under the loose rules."""
    if not isinstance(topic, str) or not topic:
        return False
    return all(c and _component_ok(c) for c in topic.split("."))


def is_valid_prefix(prefix) -> bool:
    """Whether `prefix` is a valid `prefix` subscription pattern (it may end in
    one dot, and needs two components)."""
    if not isinstance(prefix, str) or not prefix:
        return False
    parts = prefix.split(".")
    return all(
        (c and _component_ok(c)) or (not c and i == len(parts) - 1 and len(parts) > 1)
        for i, c in enumerate(parts)
    )


def check_topic(topic) -> str:
    """Returns `topic`, or raises InvalidInput saying what is wrong."""
    if not isinstance(topic, str):
        raise InvalidInput(f"the topic must be a string, not {type(topic).__name__}")
    if not is_valid_topic(topic):
        raise InvalidInput(
            f"`{topic}` is not a valid topic URI (dot-separated words, no spaces, no `#`, no empty parts)"
        )
    if topic.startswith(("wamp.", "telegraphy.presence.")):
        raise InvalidInput("topics under `wamp.` and `telegraphy.presence.` are reserved for the router")
    return topic


def pattern_error(pattern) -> str | None:
    """Why `pattern` is not a permission pattern the gateway accepts in a
    token's `subscribe`/`publish` claim (`gateway/src/authz.rs`), or None.

    `*` (every topic), `a.b.c` (exactly), `a.b.*` / `a.b*` (topics starting
    with `a.b.` / `a.b`), `a..c` (any one component in the empty place)."""
    if not isinstance(pattern, str):
        return f"a pattern must be a string, not {type(pattern).__name__}"
    if pattern == "*":
        return None
    if pattern.endswith("*"):
        prefix = pattern[:-1]
        if "*" in prefix or not prefix:
            return f"pattern `{pattern}`: `*` may only end a pattern (or be the whole pattern)"
        if not is_valid_topic(prefix[:-1] if prefix.endswith(".") else prefix):
            return f"pattern `{pattern}`: `{prefix}` is not a valid topic prefix"
        return None
    if "*" in pattern:
        return f"pattern `{pattern}`: `*` may only end a pattern"
    if is_valid_topic(pattern):
        return None
    parts = pattern.split(".")
    if len(parts) > 1 and any(parts) and all(not c or _component_ok(c) for c in parts):
        return None  # a wildcard such as `a..c`
    return f"pattern `{pattern}` is not a topic, a prefix ending in `*`, a wildcard like `a..c`, or `*`"


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether a concrete `topic` matches a permission pattern (as the gateway
    decides it)."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    if is_valid_topic(pattern):
        return pattern == topic
    want, have = pattern.split("."), topic.split(".")
    return len(want) == len(have) and all(not w or w == h for w, h in zip(want, have))
