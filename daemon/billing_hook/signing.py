"""Webhook bodies and Standard Webhooks signatures.

The body is compact JSON `{"data": ..., "timestamp": ..., "type": ...}` with
sorted keys, so the same message always yields the same bytes. Headers follow
the Standard Webhooks spec: `webhook-id` (the outbox id, stable across
retries), `webhook-timestamp` (unix seconds of *this* attempt) and
`webhook-signature` (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`). The
HMAC itself comes from the `standardwebhooks` package; this module only checks
the secret up front, because that package silently skips bad base64 characters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from daemon.billing_hook.outbox import OutboxMessage

SECRET_PREFIX = "whsec_"
# Standard Webhooks: secrets are 24 to 64 random bytes.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
USER_AGENT = "turnup-webhooks/0.1"


class WebhookSecretError(ValueError):
    """The configured webhook secret is not `whsec_` + base64 of 24-64 bytes."""


def parse_secret(secret: str) -> bytes:
    """Check a `whsec_<base64>` secret and return its key bytes."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise WebhookSecretError("webhook secret must look like 'whsec_<base64>'")
    encoded = secret[len(SECRET_PREFIX) :]
    encoded += "=" * (-len(encoded) % 4)  # accept unpadded base64, as the library does
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookSecretError("webhook secret after 'whsec_' is not valid base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise WebhookSecretError(
            f"webhook secret must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes, "
            f"got {len(key)}"
        )
    return key


def format_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and a `Z`, e.g. 2026-01-01T00:00:00.000000Z."""
    if moment.tzinfo is None:
        raise ValueError("webhook timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: object) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__} in a webhook payload")


def build_body(message: OutboxMessage) -> bytes:
    """The exact bytes sent (and signed) for `message`; same message, same bytes.

    Raises `TypeError`/`ValueError` when the payload cannot be JSON (say a NaN);
    such a message can never be delivered.
    """
    document = {
        "type": message.event_type,
        "timestamp": format_timestamp(message.created_at),
        "data": dict(message.payload),
    }
    text = json.dumps(
        document,
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )
    return text.encode("utf-8")


class WebhookSigner:
    """Signs webhook attempts with one secret, checked once at construction."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(parse_secret(secret))

    def headers(self, message_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
        if timestamp.tzinfo is None:
            raise ValueError("webhook timestamps must be timezone-aware")
        # The header carries whole seconds; sign exactly what the receiver will parse.
        seconds = math.floor(timestamp.timestamp())
        signed_at = datetime.fromtimestamp(seconds, UTC)
        signature: str = self._webhook.sign(message_id, signed_at, body.decode("utf-8"))
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(seconds),
            "webhook-signature": signature,
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }


def sign_headers(secret: str, message_id: str, timestamp: datetime, body: bytes) -> dict[str, str]:
    """Headers for one attempt; `timestamp` is the time of this attempt."""
    return WebhookSigner(secret).headers(message_id, timestamp, body)
