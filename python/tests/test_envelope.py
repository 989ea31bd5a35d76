"""The shared envelope vectors (tests/vectors/envelope): the Python encoder
writes exactly the bytes the Rust one does, and reads them back."""

import json
import math
import pathlib

import pytest

from telegraphy import InvalidInput
from telegraphy.envelope import MAX_ID, Envelope, canonical_value, from_json_value, to_json_value

VECTORS = sorted((pathlib.Path(__file__).resolve().parents[2] / "tests" / "vectors" / "envelope").glob("*.json"))


def from_vector(d) -> Envelope:
    return Envelope(
        realm=d["realm"], topic=d["topic"], args=from_json_value(d["args"]), kwargs=from_json_value(d["kwargs"]),
        filter=d["filter"], publication=d["publication"], published_at_us=d["published_at_us"],
        publisher=d["publisher"],
    )


def test_there_are_vectors():
    assert len(VECTORS) >= 4


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_encodes_the_vector_bytes(path):
    expected = path.with_suffix(".msgpack").read_bytes()
    assert from_vector(json.loads(path.read_text())).encode() == expected


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: p.stem)
def test_decodes_the_vector_bytes(path):
    d = json.loads(path.read_text())
    got = Envelope.decode(path.with_suffix(".msgpack").read_bytes())
    want = from_vector(d)
    assert (got.publication, got.realm, got.topic, got.published_at_us) == (
        want.publication, want.realm, want.topic, want.published_at_us)
    assert got.args == want.args
    assert got.kwargs == want.kwargs
    assert got.filter == {k: v for k, v in want.filter.items() if k.startswith("eligible") or v}
    assert got.publisher == want.publisher
    # and the decoded envelope encodes to the same bytes again
    assert got.encode() == path.with_suffix(".msgpack").read_bytes()


def test_new_envelopes_have_a_random_id_and_a_time():
    a, b = Envelope.new("realm1", "a.b"), Envelope.new("realm1", "a.b")
    assert 1 <= a.publication <= MAX_ID and a.publication != b.publication
    assert a.published_at_us > 1_700_000_000_000_000
    assert Envelope.decode(a.encode()).publisher is None


def test_key_order_does_not_change_the_bytes():
    one = Envelope("r", "t", [{"b": 1, "a": {"y": 2, "x": 1}}], {"z": 1, "é": 2, "A": 3}, publication=5)
    two = Envelope("r", "t", [{"a": {"x": 1, "y": 2}, "b": 1}], {"A": 3, "é": 2, "z": 1}, publication=5)
    assert one.encode() == two.encode()


def test_tuples_and_bytearrays_are_lists_and_bytes():
    assert canonical_value((1, bytearray(b"x"), memoryview(b"y"))) == [1, b"x", b"y"]


@pytest.mark.parametrize("bad, says", [
    ({1: "x"}, "keys must be strings"),
    (math.nan, "not a finite number"),
    (math.inf, "not a finite number"),
    (2**64, "does not fit in 64 bits"),
    (-(2**63) - 1, "does not fit in 64 bits"),
    ({1, 2}, "set values cannot be published"),
    (object(), "values cannot be published"),
    ("\ud800", "not valid Unicode"),
])
def test_values_that_no_client_can_receive_are_refused(bad, says):
    with pytest.raises(InvalidInput, match=says):
        canonical_value([bad])


def test_nesting_is_limited_like_the_gateway():
    ok = []
    for _ in range(62):  # args (depth 2) + 62 = 64 levels counting the envelope
        ok = [ok]
    Envelope("r", "t", [ok][0]).encode()
    with pytest.raises(InvalidInput, match="nest deeper than 64"):
        Envelope("r", "t", [ok]).encode()


def test_json_form_of_binary_values():
    assert to_json_value([b"\x00\x01"]) == ["\u0000AAE="]
    assert from_json_value(["\u0000AAE="]) == [b"\x00\x01"]
    with pytest.raises(InvalidInput, match="reads as binary"):
        to_json_value(["\u0000not binary"])
