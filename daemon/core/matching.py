"""Matching a device to an order: by serial first, else by location.

Rules (issue #3 §5):
- an order naming a serial takes the device with that serial (either spelling,
  a missing vendor prefix matches on the 8 hex digits);
- if that order also names a location and the device reports a different one,
  the result is WRONG_LOCATION: held, not activated;
- orders without a serial match on location (circuit-id, or OLT + PON port
  [+ ONU id]);
- two orders that both fit are ambiguous: no match, reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from daemon.core.identity import InvalidSerial, Location, parse_serial
from daemon.core.orders import Order


class MatchKind(StrEnum):
    MATCHED = "matched"
    WRONG_LOCATION = "wrong_location"
    AMBIGUOUS = "ambiguous"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class MatchResult:
    kind: MatchKind
    order: Order | None = None
    reason: str = ""


def _serial_fits(order: Order, serial: str) -> bool:
    if not order.expected_serial:
        return False
    try:
        return parse_serial(order.expected_serial).same_device(parse_serial(serial))
    except InvalidSerial:
        return False


def match(serial: str, location: Location, orders: Sequence[Order]) -> MatchResult:
    by_serial = [o for o in orders if _serial_fits(o, serial)]
    if len(by_serial) > 1:
        ids = ", ".join(sorted(o.id for o in by_serial))
        return MatchResult(
            MatchKind.AMBIGUOUS, None, f"serial {serial} is expected by orders {ids}"
        )
    if by_serial:
        order = by_serial[0]
        if order.location.conflicts(location):
            return MatchResult(
                MatchKind.WRONG_LOCATION,
                order,
                f"serial {serial} seen at {location.describe()}, "
                f"order expects {order.location.describe()}",
            )
        return MatchResult(MatchKind.MATCHED, order, "serial")
    if not location.known:
        return MatchResult(MatchKind.NONE)
    by_location = [o for o in orders if not o.expected_serial and o.location.matches(location)]
    if len(by_location) > 1:
        ids = ", ".join(sorted(o.id for o in by_location))
        return MatchResult(
            MatchKind.AMBIGUOUS, None, f"location {location.describe()} fits orders {ids}"
        )
    if by_location:
        return MatchResult(MatchKind.MATCHED, by_location[0], "location")
    return MatchResult(MatchKind.NONE)
