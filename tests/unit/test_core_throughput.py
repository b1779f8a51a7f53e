"""TR-143 arithmetic, including the CPE quirks we must survive."""

from __future__ import annotations

import pytest

from daemon.core.throughput import compute_throughput

BASE = {
    "DiagnosticsState": "Completed",
    "ROMTime": "2026-11-25T19:00:00.000000Z",
    "BOMTime": "2026-11-25T19:00:00.100000Z",
    "EOMTime": "2026-11-25T19:00:01.100000Z",
    "TestBytesReceived": "12500000",
}


def test_rate_from_bom_to_eom() -> None:
    r = compute_throughput("download", BASE)
    assert r.ok and r.interval == "bom-eom"
    assert r.mbps == pytest.approx(100.0)


@pytest.mark.parametrize("state", ["Complete", "Completed"])
def test_both_success_spellings(state: str) -> None:
    assert compute_throughput("download", {**BASE, "DiagnosticsState": state}).ok


def test_zero_interval_falls_back_to_rom() -> None:
    r = compute_throughput("download", {**BASE, "BOMTime": BASE["EOMTime"]})
    assert r.ok and r.interval == "rom-eom"
    assert r.mbps == pytest.approx(12.5 * 8 / 1.1, rel=1e-3)
    assert "ROMTime" in r.note


def test_unknown_bom_time_falls_back() -> None:
    r = compute_throughput("download", {**BASE, "BOMTime": "0001-01-01T00:00:00Z"})
    assert r.ok and r.interval == "rom-eom"


def test_no_usable_interval_is_a_failure_not_a_crash() -> None:
    r = compute_throughput(
        "download", {**BASE, "BOMTime": "", "ROMTime": "", "EOMTime": BASE["EOMTime"]}
    )
    assert not r.ok and r.mbps is None and "no usable interval" in r.note


@pytest.mark.parametrize(
    "values",
    [
        {**BASE, "DiagnosticsState": "Error_TransferFailed"},
        {**BASE, "TestBytesReceived": "0"},
        {**BASE, "TestBytesReceived": "lots"},
        {},
    ],
)
def test_unusable_results(values: dict[str, str]) -> None:
    r = compute_throughput("download", values)
    assert not r.ok and r.mbps is None


def test_upload_uses_bytes_sent() -> None:
    values = {**BASE, "TotalBytesSent": "6250000"}
    del values["TestBytesReceived"]
    r = compute_throughput("upload", values)
    assert r.mbps == pytest.approx(50.0)
