"""Prometheus metrics: one registry per daemon, no serials or order ids in labels.

Names follow the Prometheus rules: `turnup_` prefix, base units (seconds,
bytes), `_total` for counters. Adapters and the service layer touch these;
the core never does.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ACTIVATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400, 7 * 86400)
RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.activations = Counter(
            "turnup_activations_total",
            "Orders that reached an end of the activation flow, by result",
            ["result"],  # active, test_failed, failed, wrong_location, cancelled
            registry=r,
        )
        self.time_first_seen_to_active = Histogram(
            "turnup_activation_from_first_seen_seconds",
            "Time from the device's first contact to the service being active",
            buckets=ACTIVATION_BUCKETS,
            registry=r,
        )
        self.time_ordered_to_active = Histogram(
            "turnup_activation_from_order_seconds",
            "Time from the order being placed to the service being active",
            buckets=ACTIVATION_BUCKETS,
            registry=r,
        )
        self.orders_by_state = Gauge(
            "turnup_orders", "Orders in the store by state", ["state"], registry=r
        )
        self.devices_seen = Counter(
            "turnup_device_sightings_total",
            "Devices heard, by protocol and match outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.cwmp_sessions = Counter(
            "turnup_cwmp_sessions_total", "CWMP sessions by how they ended", ["result"], registry=r
        )
        self.cwmp_sessions_active = Gauge(
            "turnup_cwmp_sessions_active", "CWMP sessions in progress", registry=r
        )
        self.cwmp_rpcs = Counter(
            "turnup_cwmp_rpcs_total", "RPCs sent to CPEs, by method", ["method"], registry=r
        )
        self.cwmp_faults = Counter(
            "turnup_cwmp_faults_total",
            "CWMP faults, by direction (from_cpe / to_cpe) and fault code",
            ["direction", "code"],
            registry=r,
        )
        self.cwmp_auth_failures = Counter(
            "turnup_cwmp_auth_failures_total", "CPE authentication failures", ["scheme"], registry=r
        )
        self.connection_requests = Counter(
            "turnup_connection_requests_total",
            "Connection requests to CPEs, by result",
            ["result"],
            registry=r,
        )
        self.throughput = Histogram(
            "turnup_throughput_mbps",
            "Measured TR-143 throughput in Mbit/s, by direction",
            ["direction"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.throughput_results = Counter(
            "turnup_throughput_tests_total",
            "TR-143 throughput checks by direction and result (pass, fail, unusable)",
            ["direction", "result"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "turnup_webhook_deliveries_total",
            "Webhook delivery attempts by result (success, retry, dead, disabled)",
            ["result"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "turnup_outbox_pending", "Webhooks waiting for delivery", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "turnup_outbox_oldest_pending_age_seconds",
            "Age of the oldest webhook waiting for delivery",
            registry=r,
        )
        self.malformed = Counter(
            "turnup_malformed_requests_total",
            "Requests or packets dropped as malformed, by protocol",
            ["protocol"],
            registry=r,
        )
        self.internal_errors = Counter(
            "turnup_internal_errors_total",
            "Unexpected errors caught by an adapter's guard, by adapter",
            ["adapter"],
            registry=r,
        )
        self.speedtest_bytes = Counter(
            "turnup_speedtest_bytes_total",
            "Bytes moved by the built-in TR-143 speed-test server",
            ["direction"],
            registry=r,
        )
