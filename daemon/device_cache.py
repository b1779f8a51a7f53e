"""What this process knows about devices between transactions.

The hot path of a settled network is a periodic Inform from a device whose
order is long active: nothing to decide, nothing to send. The cache lets the
service answer such sightings without a transaction (their `last_seen` goes to
the store in one batched write a moment later) and lets the ACS end a session
without asking the store for work it knows is not there.

Rules: every transaction the service commits refreshes the entries it touched,
so within one daemon the cache is never behind the store. Entries also expire
after `ttl` seconds, which bounds how stale a view can be when several daemons
share one PostgreSQL store. The size is bounded (oldest entries go first).
A crash loses at most one flush interval of `last_seen` times, nothing else.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from daemon.core.orders import Device, OrderState


@dataclass(slots=True)
class Known:
    device: Device
    order_state: OrderState | None
    loaded: float  # monotonic time the entry was refreshed from a transaction
    idle: bool = False  # a queue look-up found no work, and none was added since
    generation: int = 0  # bumped whenever work may have been added


class DeviceCache:
    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._known: OrderedDict[str, Known] = OrderedDict()
        self._touched: dict[str, tuple[datetime, str]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, serial: str, now: float) -> Known | None:
        entry = self._known.get(serial)
        if entry is None:
            return None
        if now - entry.loaded > self.ttl:
            del self._known[serial]
            return None
        return entry

    def remember(self, device: Device, order_state: OrderState | None, now: float) -> None:
        old = self._known.pop(device.serial, None)
        if old is not None:
            old.device, old.order_state, old.loaded = device, order_state, now
            self._known[device.serial] = old
        else:
            self._known[device.serial] = Known(device, order_state, now)
        while len(self._known) > self.max_entries:
            self._known.popitem(last=False)

    def order_state(self, serial: str, state: OrderState) -> None:
        entry = self._known.get(serial)
        if entry is not None:
            entry.order_state = state

    def forget(self, serial: str) -> None:
        self._known.pop(serial, None)

    # ---- the device's work queue ----------------------------------------------

    def is_idle(self, serial: str, now: float) -> bool:
        entry = self.get(serial, now)
        return entry is not None and entry.idle

    def work_token(self, serial: str) -> int:
        """Take before looking at the queue; `mark_idle` with it is ignored if
        work was added meanwhile (another coroutine committed in between)."""
        entry = self._known.get(serial)
        return entry.generation if entry is not None else -1

    def mark_idle(self, serial: str, token: int) -> None:
        entry = self._known.get(serial)
        if entry is not None and entry.generation == token:
            entry.idle = True

    def mark_busy(self, serial: str) -> None:
        entry = self._known.get(serial)
        if entry is not None:
            entry.idle = False
            entry.generation += 1

    # ---- batched last_seen ------------------------------------------------------

    def touch(self, serial: str, last_seen: datetime, source: str) -> None:
        self._touched[serial] = (last_seen, source)

    def take_touched(self) -> dict[str, tuple[datetime, str]]:
        touched, self._touched = self._touched, {}
        return touched

    def restore_touched(self, touched: dict[str, tuple[datetime, str]]) -> None:
        for serial, value in touched.items():
            self._touched.setdefault(serial, value)
