"""TR-143 result arithmetic (TR-143 §4.1.1/§4.2.1, BBF TR-181 IP.Diagnostics).

Rate in Mbit/s = TestBytesReceived * 8 / (EOMTime - BOMTime). BOMTime is the
first byte of the transfer; ROMTime is when the request went out. A CPE may
report an unknown time (`0001-01-01T00:00:00Z`), leave a field empty, or give
BOM == EOM: we never divide by zero or by a missing interval, we fall back to
ROM→EOM and say so in the record, and fail the measurement if nothing is usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

SUCCESS_STATES = frozenset({"Complete", "Completed"})  # TR-181 / TR-098
UNKNOWN_TIME_YEAR = 1


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    direction: str
    ok: bool
    mbps: float | None
    test_bytes: int
    seconds: float | None
    interval: str  # "bom-eom", "rom-eom", "none"
    note: str


def parse_cwmp_time(text: str | None) -> datetime | None:
    if not text:
        return None
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.year <= UNKNOWN_TIME_YEAR:
        return None
    return parsed


def _parse_int(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def compute_throughput(direction: str, values: dict[str, str]) -> ThroughputResult:
    """`values` maps leaf names (DiagnosticsState, ROMTime, BOMTime, EOMTime,
    TestBytesReceived / TotalBytesSent / TestFileLength) to their text."""
    state = (values.get("DiagnosticsState") or "").strip()
    if state not in SUCCESS_STATES:
        return ThroughputResult(
            direction, False, None, 0, None, "none", f"diagnostics state {state!r}"
        )
    if direction == "download":
        count = _parse_int(values.get("TestBytesReceived"))
        if count is None:
            count = _parse_int(values.get("TotalBytesReceived"))
    else:
        count = _parse_int(values.get("TotalBytesSent"))
        if count is None:
            count = _parse_int(values.get("TestFileLength"))
    if not count or count <= 0:
        return ThroughputResult(direction, False, None, 0, None, "none", "no byte count reported")
    rom = parse_cwmp_time(values.get("ROMTime"))
    bom = parse_cwmp_time(values.get("BOMTime"))
    eom = parse_cwmp_time(values.get("EOMTime"))
    notes = []
    seconds: float | None = None
    interval = "none"
    if bom and eom and (eom - bom).total_seconds() > 0:
        seconds = (eom - bom).total_seconds()
        interval = "bom-eom"
    else:
        notes.append("BOMTime missing or not before EOMTime")
        if rom and eom and (eom - rom).total_seconds() > 0:
            seconds = (eom - rom).total_seconds()
            interval = "rom-eom"
            notes.append("rate measured from ROMTime instead")
    if seconds is None:
        notes.append("no usable interval")
        return ThroughputResult(direction, False, None, count, None, "none", "; ".join(notes))
    mbps = count * 8 / seconds / 1e6
    return ThroughputResult(
        direction, True, round(mbps, 3), count, seconds, interval, "; ".join(notes)
    )
