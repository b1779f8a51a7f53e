"""When to try a webhook again, and how to read a receiver's `Retry-After`.

`delays[i]` is the wait before attempt `i + 1` (counting from one), so the
first entry is the wait before the first attempt (0: send at once) and a
schedule of n delays allows n attempts in all. The default follows the
Standard Webhooks recommendation and keeps trying for a little over four
days before a message is dead-lettered.

`Retry-After` (RFC 9110 §10.2.3) is delta-seconds or an HTTP-date; we read
both, ignore garbage, and cap it so one receiver cannot park a message for
weeks.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MINUTE = 60.0
HOUR = 60 * MINUTE
DAY = 24 * HOUR

DEFAULT_DELAYS: tuple[float, ...] = (
    0.0,
    5.0,
    5 * MINUTE,
    30 * MINUTE,
    2 * HOUR,
    5 * HOUR,
    10 * HOUR,
    10 * HOUR,
    DAY,
    DAY,
    DAY,
)
DEFAULT_JITTER = 0.1
RETRY_AFTER_CAP = DAY

_DELTA_SECONDS = re.compile(r"\d{1,12}(?:\.\d{1,6})?")


class BackoffSchedule:
    """Growing delays between attempts, each jittered by ±`jitter` (a fraction)."""

    def __init__(
        self,
        delays: Sequence[float] = DEFAULT_DELAYS,
        *,
        jitter: float = DEFAULT_JITTER,
        rng: random.Random | None = None,
    ) -> None:
        if not delays:
            raise ValueError("a backoff schedule needs at least one delay")
        if any(not math.isfinite(d) or d < 0 for d in delays):
            raise ValueError("backoff delays must be finite and non-negative")
        if not 0.0 <= jitter < 1.0:
            raise ValueError("jitter must be a fraction in [0, 1)")
        self.delays: tuple[float, ...] = tuple(float(d) for d in delays)
        self.jitter = jitter
        self._rng = rng or random.Random()

    @property
    def max_attempts(self) -> int:
        return len(self.delays)

    @property
    def total_seconds(self) -> float:
        """The span from first to last attempt, before jitter."""
        return sum(self.delays)

    def next_delay(self, attempts_made: int) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (dead letter)."""
        if attempts_made < 0:
            raise ValueError("attempts_made cannot be negative")
        if attempts_made >= len(self.delays):
            return None
        base = self.delays[attempts_made]
        if base == 0.0 or self.jitter == 0.0:
            return base
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))


def retry_after_seconds(
    header: str | None, now: datetime, cap: float = RETRY_AFTER_CAP
) -> float | None:
    """Seconds asked for by a `Retry-After` header, in [0, cap]; None if absent or garbage."""
    if header is None:
        return None
    value = header.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about local time
        when = when.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    return min(max(seconds, 0.0), cap)
