"""The routine-sighting fast path: what may skip a transaction, and what may not."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.core.activation import _merge_device, _sighting_changes, is_routine
from daemon.core.events import DeviceSeen
from daemon.core.identity import Location
from daemon.core.orders import Device, DeviceStatus, OrderState
from daemon.device_cache import DeviceCache
from daemon.store import Store

T0 = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)
LOC = Location("olt-1", "1/1/1", 1)
DEV = Device(
    serial="ALCL00000001",
    status=DeviceStatus.BOUND,
    first_seen=T0,
    last_seen=T0,
    vendor_id="ALCL",
    manufacturer="Nokia",
    firmware="1.0",
    source="tr069",
    location=LOC,
    order_id="o-1",
    connection_request_url="http://cpe/cr",
    data_model="tr181",
    profile="nokia",
)


def seen(**kw: object) -> DeviceSeen:
    base = DeviceSeen(
        serial=DEV.serial,
        source="tr069",
        vendor_id="ALCL",
        manufacturer="Nokia",
        firmware="1.0",
        location=LOC,
        connection_request_url="http://cpe/cr",
        data_model="tr181",
        profile="nokia",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_periodic_inform_of_an_active_device_is_routine() -> None:
    assert is_routine(seen(), DEV, OrderState.ACTIVE)


@pytest.mark.parametrize(
    ("sighting", "device", "state"),
    [
        (seen(diagnostics_complete=True), DEV, OrderState.TESTING),  # results to read
        (seen(firmware="2.0"), DEV, OrderState.ACTIVE),  # an upgrade to record
        (seen(location=Location("olt-2", "1/1/1", 1)), DEV, OrderState.ACTIVE),  # it moved
        (seen(connection_request_url="http://cpe/new"), DEV, OrderState.ACTIVE),
        (seen(), DEV, OrderState.CANCELLED),  # the order went away: re-match
        (seen(), DEV, None),
        (seen(), replace(DEV, status=DeviceStatus.UNMATCHED, reported_unmatched=False), None),
    ],
)
def test_sightings_that_need_a_decision(
    sighting: DeviceSeen, device: Device, state: OrderState | None
) -> None:
    assert not is_routine(sighting, device, state)


def test_unmatched_and_held_devices_already_reported_are_routine() -> None:
    unmatched = replace(DEV, status=DeviceStatus.UNMATCHED, order_id=None, reported_unmatched=True)
    assert is_routine(seen(), unmatched, None)
    assert is_routine(seen(), replace(DEV, status=DeviceStatus.HELD, order_id=None), None)


def test_cache_expiry_bound_and_idle_tokens() -> None:
    cache = DeviceCache(ttl=10, max_entries=2)
    cache.remember(DEV, OrderState.ACTIVE, now=0)
    assert cache.get(DEV.serial, 5) is not None
    assert cache.get(DEV.serial, 11) is None  # expired
    cache.remember(DEV, OrderState.ACTIVE, now=20)
    token = cache.work_token(DEV.serial)
    cache.mark_busy(DEV.serial)  # work added while we looked at the queue ...
    cache.mark_idle(DEV.serial, token)  # ... so the stale "no work" is ignored
    assert not cache.is_idle(DEV.serial, 21)
    cache.mark_idle(DEV.serial, cache.work_token(DEV.serial))
    assert cache.is_idle(DEV.serial, 21)
    for i in range(3):
        cache.remember(replace(DEV, serial=f"ALCL0000000{i + 2}"), None, now=22)
    assert len(cache) == 2 and cache.get(DEV.serial, 22) is None  # oldest went first


def test_touches_are_kept_until_written() -> None:
    cache = DeviceCache(ttl=10, max_entries=10)
    cache.touch(DEV.serial, DEV.last_seen, "tr069")
    taken = cache.take_touched()
    assert taken == {DEV.serial: (DEV.last_seen, "tr069")}
    cache.restore_touched(taken)  # the write failed
    assert cache.take_touched() == taken


@pytest.mark.anyio
async def test_writer_thread_transaction_rolls_back_on_error(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 't.db'}")
    try:

        async def half_done(tx: object) -> None:
            await tx.save_device(DEV)  # type: ignore[attr-defined]
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await store.run_transaction(half_done)  # type: ignore[arg-type]
        async with store.read() as tx:
            assert await tx.get_device(DEV.serial) is None

        async def save(tx: object) -> None:
            await tx.save_device(DEV)  # type: ignore[attr-defined]

        await store.run_transaction(save)  # type: ignore[arg-type]
        async with store.read() as tx:  # the aiosqlite readers see the writer's commit
            assert await tx.get_device(DEV.serial) == DEV
    finally:
        await store.close()


_VALUES = {
    "vendor_id": ["", "ALCL", "HWTC"],
    "manufacturer": ["", "Nokia", "Huawei"],
    "oui": ["", "00D0F6"],
    "product_class": ["", "G-240W"],
    "model": ["", "G-240W-F"],
    "firmware": ["", "1.0", "2.0"],
    "connection_request_url": [None, "", "http://cpe/cr", "http://cpe/cr2"],
    "data_model": [None, "tr181", "tr098"],
    "profile": [None, "nokia", "generic-tr181"],
    "location": [Location(), LOC, Location("olt-2", "1/1/2", 3)],
}


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({k: st.sampled_from(v) for k, v in _VALUES.items()}))
def test_routine_check_agrees_with_the_merge(fields: dict[str, object]) -> None:
    """The shortcut (`_sighting_changes`) says "nothing changes" exactly when the
    full merge gives back the stored device apart from last_seen/source."""
    sighting = seen(**fields)
    merged = _merge_device(DEV, sighting, T0 + timedelta(hours=1))
    unchanged = replace(merged, last_seen=DEV.last_seen, source=DEV.source) == DEV
    assert is_routine(sighting, DEV, OrderState.ACTIVE) == unchanged
    assert _sighting_changes(DEV, sighting) == (not unchanged)
