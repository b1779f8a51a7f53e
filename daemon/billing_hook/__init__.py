"""Billing webhooks: the outbox relay, Standard Webhooks signing and retry schedule."""

from daemon.billing_hook.outbox import MemoryOutbox, OutboxMessage, OutboxStore
from daemon.billing_hook.relay import DeliveryResult, RelayMetrics, WebhookRelay
from daemon.billing_hook.schedule import BackoffSchedule, retry_after_seconds
from daemon.billing_hook.signing import (
    WebhookSecretError,
    WebhookSigner,
    build_body,
    sign_headers,
)

__all__ = [
    "BackoffSchedule",
    "DeliveryResult",
    "MemoryOutbox",
    "OutboxMessage",
    "OutboxStore",
    "RelayMetrics",
    "WebhookRelay",
    "WebhookSecretError",
    "WebhookSigner",
    "build_body",
    "retry_after_seconds",
    "sign_headers",
]
