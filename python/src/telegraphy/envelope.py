"""The bus envelope (format version 1, `docs/envelope.md`) in its canonical
msgpack form: the same bytes the Rust publisher and the gateway write.

    [1, publication, realm, topic, published_at_us, args, kwargs, filter, publisher]

Canonical means: every map's keys sorted by their UTF-8 bytes, integers in
their smallest form (non-negative ones unsigned), floats always float64,
binary data as msgpack `bin`, smallest headers. `msgpack.packb(...,
use_bin_type=True)` of a structure whose dicts are already sorted gives
exactly that; `canonical()` builds such a structure and checks every value on
the way, so a bad payload fails here with a message instead of on a gateway.
"""

from __future__ import annotations

import base64
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import InvalidInput

FORMAT_VERSION = 1
#: The largest id WAMP allows (session and publication ids are 1..=2^53).
MAX_ID = 2**53
#: Nesting the gateway decodes, counting the envelope's own list.
MAX_DEPTH = 64
FILTER_KEYS = ("eligible", "eligible_authid", "eligible_authrole", "exclude", "exclude_authid", "exclude_authrole")
PUBLISHER_KEYS = ("authid", "authrole", "disclose_me", "exclude_me", "node", "session")

_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


def _sorted_keys(d: dict) -> list:
    return sorted(d, key=lambda k: k.encode("utf-8"))


def canonical_value(value: Any, depth: int = 2, where: str = "payload") -> Any:
    """`value` as a canonical msgpack structure: dicts with sorted string keys,
    tuples as lists, bytes-likes as bytes. `depth` is the nesting level of
    `value`'s container inside the envelope. Raises InvalidInput for values no
    Telegraphy client can receive."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _UINT_MAX:
            raise InvalidInput(f"{where}: the integer {value} does not fit in 64 bits; send it as a string")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where}: {value} is not a finite number; JSON subscribers cannot receive it")
        return float(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{where}: a string is not valid Unicode (lone surrogate)") from None
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple)):
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{where}: lists and dictionaries nest deeper than {MAX_DEPTH} levels")
        return [canonical_value(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise InvalidInput(f"{where}: lists and dictionaries nest deeper than {MAX_DEPTH} levels")
        for k in value:
            if not isinstance(k, str):
                raise InvalidInput(f"{where}: dictionary keys must be strings, not {type(k).__name__} ({k!r})")
            canonical_value(k, depth, where)
        return {k: canonical_value(value[k], depth + 1, f"{where}[{k!r}]") for k in _sorted_keys(value)}
    raise InvalidInput(
        f"{where}: {type(value).__name__} values cannot be published; use None, bool, int, float, str, bytes, "
        f"list or dict (convert dates, decimals and UUIDs to strings first)"
    )


def _ids(value, name: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInput(f"`{name}` must be a list of session ids")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_ID:
            raise InvalidInput(f"`{name}` must hold session ids (integers from 0 to 2^53), not {v!r}")
        out.append(int(v))
    return out


def _strings(value, name: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidInput(f"`{name}` must be a list of strings, not one string")
    out = []
    for v in value:
        if not isinstance(v, str):
            raise InvalidInput(f"`{name}` must hold strings, not {v!r}")
        out.append(v)
    return out


def canonical_filter(filter: dict | None) -> dict:
    """The subscriber black/white lists, checked, in canonical form: only the
    lists that are set; an empty `exclude*` list is left out, an empty
    `eligible*` list is kept (it admits nobody)."""
    out = {}
    for key, value in (filter or {}).items():
        if key not in FILTER_KEYS:
            raise InvalidInput(f"unknown filter option `{key}`; use one of {', '.join(FILTER_KEYS)}")
        if value is None:
            continue
        items = _ids(value, key) if key in ("eligible", "exclude") else _strings(value, key)
        if key.startswith("exclude") and not items:
            continue
        out[key] = items
    return {k: out[k] for k in FILTER_KEYS if k in out}


@dataclass
class Envelope:
    """One event on the bus."""

    realm: str
    topic: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    filter: dict = field(default_factory=dict)
    publication: int = 0
    published_at_us: int = 0
    #: The publishing WAMP session (gateway publishes only), else None.
    publisher: dict | None = None
    #: Keep it as the topic's retained event (WAMP `retain`).
    retain: bool = False
    #: Its place in the topic's history, `(epoch, offset)`, when the topic
    #: keeps history (set by the store, never by a publisher).
    position: tuple | None = None

    @classmethod
    def new(cls, realm: str, topic: str, args=None, kwargs=None, filter=None) -> "Envelope":
        """A fresh event: random publication id, published now."""
        return cls(
            realm=realm,
            topic=topic,
            args=list(args or []),
            kwargs=dict(kwargs or {}),
            filter=dict(filter or {}),
            publication=secrets.randbelow(MAX_ID) + 1,
            published_at_us=time.time_ns() // 1000,
        )

    def canonical(self) -> list:
        """The envelope as the canonical msgpack structure (checked)."""
        if not isinstance(self.args, (list, tuple)):
            raise InvalidInput(f"args must be a list, not {type(self.args).__name__}")
        if not isinstance(self.kwargs, dict):
            raise InvalidInput(f"kwargs must be a dict, not {type(self.kwargs).__name__}")
        publisher = None
        if self.publisher is not None:
            publisher = {k: self.publisher[k] for k in PUBLISHER_KEYS}
        fields = [
            FORMAT_VERSION,
            self.publication,
            self.realm,
            self.topic,
            self.published_at_us,
            canonical_value(list(self.args), 2, "args"),
            canonical_value(self.kwargs, 2, "kwargs"),
            canonical_filter(self.filter),
            publisher,
        ]
        if self.retain or self.position is not None:
            # Format 1.1: options and position appended (docs/envelope.md).
            fields.append({"retain": True} if self.retain else {})
            fields.append(list(self.position) if self.position is not None else None)
        return fields

    def keepable(self) -> bool:
        """Whether a store may keep it: not addressed to session ids."""
        return not self.filter.get("exclude") and self.filter.get("eligible") is None

    def encode(self) -> bytes:
        """The canonical msgpack bytes."""
        return msgpack.packb(self.canonical(), use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> "Envelope":
        """Reads envelope bytes (version 1; extra trailing elements ignored)."""
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except Exception as e:  # msgpack raises several types
            raise InvalidInput(f"not a msgpack envelope: {e}") from None
        if not isinstance(fields, list) or len(fields) < 9:
            raise InvalidInput("not an envelope: expected a list of at least 9 elements")
        if fields[0] != FORMAT_VERSION:
            raise InvalidInput(f"envelope format version {fields[0]!r} is not {FORMAT_VERSION}")
        options = fields[9] if len(fields) > 9 and isinstance(fields[9], dict) else {}
        position = tuple(fields[10]) if len(fields) > 10 and isinstance(fields[10], list) else None
        publication = fields[1]
        if position is not None:
            # A kept event's id is its position (offset * 65536 + epoch).
            publication = (position[1] << 16) | position[0]
        return cls(
            publication=publication,
            realm=fields[2],
            topic=fields[3],
            published_at_us=fields[4],
            args=fields[5],
            kwargs=fields[6],
            filter=fields[7],
            publisher=fields[8],
            retain=bool(options.get("retain", False)),
            position=position,
        )


# JSON (WAMP JSON, the HTTP publish body, the shared vector files) carries
# binary data as a string: NUL, then the base64 of the bytes.


def to_json_value(value: Any, where: str = "payload") -> Any:
    """A canonical value with bytes turned into WAMP JSON binary strings.
    A str that starts with NUL would be read as binary: refused."""
    if isinstance(value, bytes):
        return "\u0000" + base64.b64encode(value).decode("ascii")
    if isinstance(value, str):
        if value.startswith("\u0000"):
            raise InvalidInput(
                f"{where}: a string starting with a NUL character reads as binary data in WAMP JSON; "
                f"send bytes instead"
            )
        return value
    if isinstance(value, list):
        return [to_json_value(v, where) for v in value]
    if isinstance(value, dict):
        return {k: to_json_value(v, where) for k, v in value.items()}
    return value


def from_json_value(value: Any) -> Any:
    """The reverse of `to_json_value`: WAMP JSON binary strings become bytes."""
    if isinstance(value, str) and value.startswith("\u0000"):
        return base64.b64decode(value[1:])
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: from_json_value(v) for k, v in value.items()}
    return value
