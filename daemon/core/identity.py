"""Device identities: ONT/CPE serial normalisation, vendor ids and locations.

A GPON/XGS-PON serial is 4 ASCII vendor letters + 8 hex digits
(`ALCL1A2B3C4D`, ITU-T G.984.3 §9.2.4.1), also written as 16 hex digits whose
first 8 encode the letters (`414C434C1A2B3C4D`). Some exports drop the vendor
prefix and keep only the 8 hex digits. We store the canonical
`VVVVXXXXXXXX` form (vendor upper-case, hex upper-case) and match a
prefix-less serial on its 8 hex digits.
CPE serials that are not GPON-shaped (a TR-069 gateway's `SerialNumber`) are
kept as given, stripped and upper-cased.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VENDORS: dict[str, str] = {
    "ALCL": "Nokia",
    "HWTC": "Huawei",
    "ZTEG": "ZTE",
    "FHTT": "FiberHome",
    "CXNK": "Calix",
    "UBNT": "Ubiquiti",
    "ZNTS": "Zhone/DZS",
    "SCOM": "Sercomm",
    "TMBB": "Technicolor",
}

_GPON = re.compile(r"^([A-Z]{4})([0-9A-F]{8})$")
_HEX16 = re.compile(r"^([0-9A-F]{16})$")
_HEX8 = re.compile(r"^([0-9A-F]{8})$")
_GENERIC = re.compile(r"^[A-Z0-9._:/-]{1,64}$")


class InvalidSerial(ValueError):
    """A serial that cannot be any device's (empty, too long, odd characters)."""


@dataclass(frozen=True, slots=True)
class Serial:
    """A normalised serial. `vendor_id` is empty when the source dropped it."""

    vendor_id: str
    body: str  # 8 hex digits for GPON serials; the whole serial otherwise
    gpon: bool

    @property
    def text(self) -> str:
        return f"{self.vendor_id}{self.body}"

    @property
    def vendor(self) -> str | None:
        return VENDORS.get(self.vendor_id)

    def same_device(self, other: Serial) -> bool:
        """Equal, or equal hex when one side lost its vendor prefix."""
        if self.gpon and other.gpon:
            if self.body != other.body:
                return False
            return not self.vendor_id or not other.vendor_id or self.vendor_id == other.vendor_id
        return self.text == other.text

    def __str__(self) -> str:
        return self.text


def parse_serial(raw: str) -> Serial:
    text = raw.strip().upper().replace("-", "") if raw else ""
    if not text:
        raise InvalidSerial("serial is empty")
    if m := _GPON.match(text):
        return Serial(m.group(1), m.group(2), gpon=True)
    if m := _HEX16.match(text):
        prefix = bytes.fromhex(text[:8])
        letters = prefix.decode("ascii", errors="replace")
        if letters.isalpha() and letters.isascii() and letters.isupper():
            return Serial(letters, text[8:], gpon=True)
    if m := _HEX8.match(text):
        return Serial("", text, gpon=True)
    generic = raw.strip().upper()
    if not _GENERIC.match(generic):
        raise InvalidSerial(f"serial {raw!r} has characters no device serial uses")
    return Serial("", generic, gpon=False)


def normalize_serial(raw: str) -> str:
    """The canonical text form of a serial (raises InvalidSerial)."""
    return parse_serial(raw).text


def serial_match_key(raw: str) -> str:
    """The key two spellings of one serial share: the 8 hex digits of a GPON
    serial, or the whole serial otherwise."""
    s = parse_serial(raw)
    return s.body if s.gpon else s.text


@dataclass(frozen=True, slots=True)
class Location:
    """Where a device sits: OLT / PON port / ONU id, or a relay's circuit-id.

    Any field may be unknown. Two locations agree when the circuit-ids are equal,
    or when every OLT/PON/ONU field known on both sides is equal and at least
    OLT and PON port are known on both.
    """

    olt: str | None = None
    pon_port: str | None = None
    onu_id: int | None = None
    circuit_id: str | None = None

    @property
    def known(self) -> bool:
        return bool(self.circuit_id or (self.olt and self.pon_port))

    def matches(self, other: Location) -> bool:
        if self.circuit_id and other.circuit_id:
            return self.circuit_id == other.circuit_id
        if not (self.olt and self.pon_port and other.olt and other.pon_port):
            return False
        if self.olt.lower() != other.olt.lower() or self.pon_port != other.pon_port:
            return False
        if self.onu_id is not None and other.onu_id is not None:
            return self.onu_id == other.onu_id
        return True

    def conflicts(self, other: Location) -> bool:
        """Both sides known and they disagree: evidence of a wrong location."""
        if not (self.known and other.known):
            return False
        comparable = bool(self.circuit_id and other.circuit_id) or bool(
            self.olt and self.pon_port and other.olt and other.pon_port
        )
        return comparable and not self.matches(other)

    def describe(self) -> str:
        parts = []
        if self.olt:
            parts.append(f"olt={self.olt}")
        if self.pon_port:
            parts.append(f"pon={self.pon_port}")
        if self.onu_id is not None:
            parts.append(f"onu={self.onu_id}")
        if self.circuit_id:
            parts.append(f"circuit-id={self.circuit_id}")
        return " ".join(parts) or "unknown"

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "olt": self.olt,
            "pon_port": self.pon_port,
            "onu_id": self.onu_id,
            "circuit_id": self.circuit_id,
        }
