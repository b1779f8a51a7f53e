"""Serial normalisation, vendor ids and location matching."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.identity import (
    InvalidSerial,
    Location,
    normalize_serial,
    parse_serial,
    serial_match_key,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("ALCL1A2B3C4D", "ALCL1A2B3C4D"),
        ("alcl1a2b3c4d", "ALCL1A2B3C4D"),
        ("  ALCL1a2b3c4d \n", "ALCL1A2B3C4D"),
        ("414C434C1A2B3C4D", "ALCL1A2B3C4D"),  # 16-hex form
        ("414c434c1a2b3c4d", "ALCL1A2B3C4D"),
        ("48575443DEADBEEF", "HWTCDEADBEEF"),
        ("1A2B3C4D", "1A2B3C4D"),  # vendor prefix dropped by an export
        ("CP1234X5678", "CP1234X5678"),  # a gateway serial, kept as given
    ],
)
def test_normalise(raw: str, canonical: str) -> None:
    assert normalize_serial(raw) == canonical


def test_vendor_names() -> None:
    assert parse_serial("ZTEG00000001").vendor == "ZTE"
    assert parse_serial("CXNK00000001").vendor == "Calix"
    assert parse_serial("1A2B3C4D").vendor is None


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("ALCL1A2B3C4D", "414C434C1A2B3C4D", True),
        ("ALCL1A2B3C4D", "1A2B3C4D", True),  # missing prefix matches on the hex
        ("ALCL1A2B3C4D", "HWTC1A2B3C4D", False),  # same hex, other vendor
        ("ALCL1A2B3C4D", "ALCL1A2B3C4E", False),
    ],
)
def test_same_device(a: str, b: str, same: bool) -> None:
    assert parse_serial(a).same_device(parse_serial(b)) is same
    if same:
        assert serial_match_key(a) == serial_match_key(b)


@pytest.mark.parametrize("raw", ["", "   ", "ALCL 1A2B<script>", "x" * 80])
def test_invalid(raw: str) -> None:
    with pytest.raises(InvalidSerial):
        parse_serial(raw)


@settings(max_examples=300, derandomize=True)
@given(st.text(max_size=40))
def test_parse_never_raises_other_errors(raw: str) -> None:
    try:
        parse_serial(raw)
    except InvalidSerial:
        pass


@settings(max_examples=200, derandomize=True)
@given(st.sampled_from(["ALCL", "HWTC", "ZTEG", "CXNK"]), st.integers(0, 2**32 - 1))
def test_16_hex_round_trip(vendor: str, number: int) -> None:
    serial = f"{vendor}{number:08X}"
    sixteen = vendor.encode().hex().upper() + f"{number:08X}"
    assert normalize_serial(sixteen) == serial


def test_location_rules() -> None:
    a = Location("olt-1", "1/1/3", 7, None)
    assert a.matches(Location("OLT-1", "1/1/3", 7))
    assert a.matches(Location("olt-1", "1/1/3", None))  # ONU id unknown on one side
    assert not a.matches(Location("olt-1", "1/1/4", 7))
    assert not a.matches(Location("olt-1", "1/1/3", 8))
    assert a.conflicts(Location("olt-2", "1/1/3", 7))
    assert not a.conflicts(Location())  # nothing known: no evidence either way
    c = Location(circuit_id="olt-1 xpon 1/1/3:7")
    assert c.matches(Location(circuit_id="olt-1 xpon 1/1/3:7"))
    assert c.conflicts(Location(circuit_id="olt-1 xpon 1/1/3:8"))
    assert not Location(olt="x").known
