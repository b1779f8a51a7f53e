"""Metric names follow the Prometheus rules; the systemd unit is notify-typed and sandboxed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from daemon.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "turnup.service"
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Labels whose values grow with the customer base blow up the series count.
UNBOUNDED_LABELS = {"serial", "order_id", "order", "account", "account_id", "id", "device"}
RESERVED_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_info")


def collectors(metrics: Metrics) -> dict[str, MetricWrapperBase]:
    found = {k: v for k, v in vars(metrics).items() if isinstance(v, MetricWrapperBase)}
    assert found
    return found


def full_name(c: MetricWrapperBase) -> str:
    # prometheus_client strips `_total` from a counter's family name; put it back.
    name: str = c._name  # type: ignore[attr-defined]
    return name + "_total" if c._type == "counter" else name  # type: ignore[attr-defined]


def label_names(c: MetricWrapperBase) -> tuple[str, ...]:
    names: tuple[str, ...] = c._labelnames  # type: ignore[attr-defined]
    return names


def test_every_registered_metric_is_an_attribute() -> None:
    m = Metrics()
    families = {f.name for f in m.registry.collect()}
    assert families == {c._name for c in collectors(m).values()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("attr", sorted(collectors(Metrics())))
def test_metric_naming(attr: str) -> None:
    c = collectors(Metrics())[attr]
    name = full_name(c)
    kind = c._type  # type: ignore[attr-defined]
    assert name.startswith("turnup_"), name
    assert SNAKE.match(name), name
    assert not name.endswith(RESERVED_SUFFIXES), name
    if kind == "counter":
        assert name.endswith("_total"), name
    else:
        assert not name.endswith("_total"), name
    if kind == "histogram":
        assert name.endswith("_seconds") or name == "turnup_throughput_mbps", name
    if "seconds" in name:
        assert name.endswith("_seconds"), name
    assert c._documentation.strip(), name  # type: ignore[attr-defined]


@pytest.mark.parametrize("attr", sorted(collectors(Metrics())))
def test_labels_are_bounded_and_snake_case(attr: str) -> None:
    c = collectors(Metrics())[attr]
    for label in label_names(c):
        assert SNAKE.match(label), label
        assert label not in UNBOUNDED_LABELS, f"{full_name(c)} has label {label!r}"
        assert not label.startswith("__"), label


def test_samples_exposed_after_use() -> None:
    m = Metrics()
    for c in collectors(m).values():
        labels = label_names(c)
        child = c.labels(*["x"] * len(labels)) if labels else c
        if c._type == "histogram":  # type: ignore[attr-defined]
            child.observe(1.0)  # type: ignore[attr-defined]
        elif c._type == "counter":  # type: ignore[attr-defined]
            child.inc()  # type: ignore[attr-defined]
        else:
            child.set(1)  # type: ignore[attr-defined]
    names = {s.name for f in m.registry.collect() for s in f.samples}
    assert "turnup_activations_total" in names
    assert "turnup_throughput_mbps_bucket" in names
    assert "turnup_activation_from_order_seconds_count" in names
    for name in names:
        assert name.startswith("turnup_") and SNAKE.match(name), name


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.malformed.labels("cwmp").inc()
    assert b.registry.get_sample_value("turnup_malformed_requests_total", {"protocol": "cwmp"}) in (
        None,
        0.0,
    )


# ---- the systemd unit ----------------------------------------------------------------


def unit() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    assert key in section, f"{key} missing"
    return section[key][-1]


def test_unit_is_notify_typed_with_a_watchdog() -> None:
    service = unit()["Service"]
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") in ("main", "exec")
    watchdog = one(service, "WatchdogSec")
    assert watchdog.isdigit() and int(watchdog) > 0
    assert "turnup run --config" in one(service, "ExecStart")
    assert "turnup check-config" in one(service, "ExecStartPre")
    assert one(service, "KillSignal") == "SIGTERM"


def test_unit_is_sandboxed() -> None:
    service = unit()["Service"]
    assert one(service, "DynamicUser") == "yes"
    assert one(service, "StateDirectory") == "turnup"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "PrivateTmp") == "yes"
    caps = set(one(service, "CapabilityBoundingSet").split())
    assert caps, "an empty CapabilityBoundingSet line would be an error here"
    assert caps <= {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW"}, caps
    ambient = set(one(service, "AmbientCapabilities").split())
    assert ambient <= caps


def test_unit_store_url_matches_the_state_directory() -> None:
    service = unit()["Service"]
    env = dict(v.split("=", 1) for v in service.get("Environment", []))
    assert env["TURNUP_STORE__URL"] == "sqlite+aiosqlite:////var/lib/turnup/turnup.db"
    assert "WantedBy" in unit()["Install"]
