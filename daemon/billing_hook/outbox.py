"""The outbox seen from the webhook relay: one message type and the store protocol.

The store (SQL in production, `MemoryOutbox` in tests) owns durability. A state
change and the outbox row it causes are written in one transaction elsewhere;
this module only names what the relay needs to read and record. The message id
is the Standard Webhooks `webhook-id` and never changes across retries, so the
receiver can deduplicate.

Every `mark_*` call records one delivery attempt (it bumps `attempts`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

EVENT_TYPES = frozenset(
    {
        "service.activated",
        "provisioning.failed",
        "device.unmatched",
        "device.wrong_location",
    }
)


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: str  # the webhook-id, "msg_" + uuid4 hex; stable across retries
    event_type: str
    payload: Mapping[str, Any]  # the `data` object of the webhook body
    created_at: datetime  # aware UTC
    attempts: int  # delivery attempts made so far
    next_attempt_at: datetime


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


class OutboxStore(Protocol):
    async def claim_due(self, now: datetime, limit: int) -> list[OutboxMessage]: ...

    async def mark_delivered(self, message_id: str, now: datetime, status_code: int) -> None: ...

    async def mark_retry(
        self,
        message_id: str,
        now: datetime,
        next_attempt_at: datetime,
        error: str,
        status_code: int | None,
    ) -> None: ...

    async def mark_dead(
        self, message_id: str, now: datetime, error: str, status_code: int | None
    ) -> None: ...

    async def endpoint_disabled(self) -> str | None: ...

    async def disable_endpoint(self, now: datetime, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt as the memory store saw it (for tests and debugging)."""

    message_id: str
    outcome: str  # "delivered", "retry", "dead"
    at: datetime
    status_code: int | None
    error: str | None


class MemoryOutbox:
    """An in-memory `OutboxStore`: the reference semantics, used by tests.

    `claim_due` hands out pending messages whose `next_attempt_at` has come, oldest
    first, and holds them as in flight until a `mark_*` call settles them, so two
    overlapping passes never send the same message at once.
    """

    def __init__(self) -> None:
        self._pending: dict[str, OutboxMessage] = {}
        self._in_flight: set[str] = set()
        self.delivered: list[OutboxMessage] = []
        self.dead: list[OutboxMessage] = []
        self.attempt_log: list[AttemptRecord] = []
        self.last_error: dict[str, str] = {}
        self.disabled_reason: str | None = None
        self.disabled_at: datetime | None = None

    def add(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        now: datetime,
        message_id: str | None = None,
    ) -> OutboxMessage:
        if now.tzinfo is None:
            raise ValueError("outbox times must be timezone-aware UTC")
        message = OutboxMessage(
            id=message_id or new_message_id(),
            event_type=event_type,
            payload=dict(payload),
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
        if message.id in self._pending or any(m.id == message.id for m in self.delivered):
            raise ValueError(f"duplicate outbox message id {message.id!r}")
        self._pending[message.id] = message
        return message

    @property
    def pending(self) -> list[OutboxMessage]:
        return list(self._pending.values())

    def get(self, message_id: str) -> OutboxMessage | None:
        return self._pending.get(message_id)

    def enable_endpoint(self) -> None:
        self.disabled_reason = None
        self.disabled_at = None

    # -- OutboxStore -------------------------------------------------------

    async def claim_due(self, now: datetime, limit: int) -> list[OutboxMessage]:
        due = [
            m
            for m in self._pending.values()
            if m.id not in self._in_flight and m.next_attempt_at <= now
        ]
        due.sort(key=lambda m: (m.next_attempt_at, m.created_at))
        claimed = due[: max(limit, 0)]
        self._in_flight.update(m.id for m in claimed)
        return claimed

    async def mark_delivered(self, message_id: str, now: datetime, status_code: int) -> None:
        message = self._settle(message_id)
        self.delivered.append(replace(message, attempts=message.attempts + 1))
        self.attempt_log.append(AttemptRecord(message_id, "delivered", now, status_code, None))

    async def mark_retry(
        self,
        message_id: str,
        now: datetime,
        next_attempt_at: datetime,
        error: str,
        status_code: int | None,
    ) -> None:
        message = self._settle(message_id)
        self._pending[message_id] = replace(
            message, attempts=message.attempts + 1, next_attempt_at=next_attempt_at
        )
        self.last_error[message_id] = error
        self.attempt_log.append(AttemptRecord(message_id, "retry", now, status_code, error))

    async def mark_dead(
        self, message_id: str, now: datetime, error: str, status_code: int | None
    ) -> None:
        message = self._settle(message_id)
        self.dead.append(replace(message, attempts=message.attempts + 1))
        self.last_error[message_id] = error
        self.attempt_log.append(AttemptRecord(message_id, "dead", now, status_code, error))

    async def endpoint_disabled(self) -> str | None:
        return self.disabled_reason

    async def disable_endpoint(self, now: datetime, reason: str) -> None:
        if self.disabled_reason is None:
            self.disabled_reason = reason
            self.disabled_at = now

    def _settle(self, message_id: str) -> OutboxMessage:
        self._in_flight.discard(message_id)
        try:
            return self._pending.pop(message_id)
        except KeyError:
            raise KeyError(f"no pending outbox message {message_id!r}") from None
