"""Checks the shared envelope vectors with an independent msgpack encoder.

Each tests/vectors/envelope/*.json describes an envelope; this script builds
the canonical msgpack form from the specification in docs/envelope.md with
Python's `msgpack` package (not with Telegraphy's Rust code) and compares it
with the .msgpack file beside it, byte for byte. The Python publisher will
use the same rules.

    python tests/vectors/check_vectors.py
"""

import base64
import json
import pathlib
import sys

import msgpack

FORMAT_VERSION = 1
FILTER_KEYS = ["eligible", "eligible_authid", "eligible_authrole", "exclude", "exclude_authid", "exclude_authrole"]


def value(v):
    """A JSON value from a vector as a canonical msgpack value: binary data
    (WAMP JSON form: NUL + base64) as bytes, dictionaries with sorted keys."""
    if isinstance(v, str) and v.startswith("\u0000"):
        return base64.b64decode(v[1:])
    if isinstance(v, list):
        return [value(x) for x in v]
    if isinstance(v, dict):
        return {k: value(v[k]) for k in sorted(v)}
    return v


def canonical(d):
    f = d["filter"]
    filt = {k: f[k] for k in FILTER_KEYS if k in f and (k.startswith("eligible") or f[k])}
    p = d["publisher"]
    publisher = None if p is None else {k: p[k] for k in sorted(p)}
    return [
        FORMAT_VERSION,
        d["publication"],
        d["realm"],
        d["topic"],
        d["published_at_us"],
        value(d["args"]),
        value(d["kwargs"]),
        filt,
        publisher,
    ]


def main():
    folder = pathlib.Path(__file__).parent / "envelope"
    vectors = sorted(folder.glob("*.json"))
    failed = 0
    for path in vectors:
        expected = path.with_suffix(".msgpack").read_bytes()
        got = msgpack.packb(canonical(json.loads(path.read_text())), use_bin_type=True)
        if got != expected:
            failed += 1
            print(f"{path.name}: bytes differ\n  python: {got.hex()}\n  vector: {expected.hex()}")
        back = msgpack.unpackb(expected, raw=False, strict_map_key=True)
        if back[0] != FORMAT_VERSION:
            failed += 1
            print(f"{path.name}: format version {back[0]}")
    print(f"{len(vectors) - failed} passed, {failed} failed")
    return 1 if failed or not vectors else 0


if __name__ == "__main__":
    sys.exit(main())
