"""Sans-IO CWMP session state machine, ACS side (TR-069 §3.7, A.3).

Owns the order of messages inside one CWMP session: Inform first, then the
CPE's own requests, then the empty POST, then one ACS RPC per HTTP response
with the CPE answering each in its next POST, until the ACS answers 204.

Rules:
- No I/O, no clock, no logging: the adapter feeds decoded envelopes (None for
  an empty POST) and the time, and writes out what it gets back.
- Every transition is in `_TRANSITIONS`; anything not in it is illegal.
  Illegal input from the CPE raises `CwmpProtocolError` (a `WireError` that
  carries the ACS fault code to answer with, A.5.2) and ends the session;
  illegal calls from our own side raise `CwmpUsageError` (our bug).
- One session object per CWMP session. After ENDED, a fresh Inform from the
  same CPE is a *new* session: the adapter creates a new `CwmpSession` for it
  (feeding it to the ended one raises with fault 8005, "retry request").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from typing import TypeAlias

from daemon.errors import WireError
from daemon.tr069.codec import (
    AddObject,
    AddObjectResponse,
    CwmpVersion,
    DeleteObject,
    DeleteObjectResponse,
    DeviceId,
    Download,
    DownloadResponse,
    Envelope,
    EventStruct,
    FactoryReset,
    FactoryResetResponse,
    Fault,
    GetParameterNames,
    GetParameterNamesResponse,
    GetParameterValues,
    GetParameterValuesResponse,
    GetRPCMethods,
    GetRPCMethodsResponse,
    Inform,
    InformResponse,
    Message,
    Reboot,
    RebootResponse,
    SetParameterValues,
    SetParameterValuesResponse,
    TransferComplete,
    TransferCompleteResponse,
)

FAULT_INVALID_ARGUMENTS = 8003  # A.5.2: out-of-order or unexpected message
FAULT_RETRY_REQUEST = 8005  # A.5.2: session gone; the CPE should start over


class CwmpProtocolError(WireError):
    """The CPE broke the session order; answer with fault `fault_code`."""

    def __init__(self, fault_code: int, message: str) -> None:
        super().__init__(message)
        self.fault_code = fault_code
        self.message = message


class CwmpUsageError(RuntimeError):
    """The ACS side called the session out of order: a bug in turnup."""


class SessionState(Enum):
    AWAIT_INFORM = auto()  # nothing received yet
    CPE_REQUESTS = auto()  # Inform answered; CPE may send requests or an empty POST
    ACS_IDLE = auto()  # empty POST (or a response) in hand: send an RPC or end
    AWAIT_RESPONSE = auto()  # an RPC was sent; the next POST must answer it
    ENDED = auto()  # 204 sent or the session broke; nothing more is accepted


class InputKind(Enum):
    # From the CPE:
    INFORM = auto()
    CPE_REQUEST = auto()  # TransferComplete, GetRPCMethods (A.3.1, A.3.3)
    EMPTY_POST = auto()
    RESPONSE = auto()  # a response to our RPC, or a Fault
    UNEXPECTED = auto()  # anything a CPE never sends (ACS-side messages)
    # From the ACS (us):
    ANSWER = auto()  # answer to a CPE request
    REFUSE = auto()  # a Fault in answer to the Inform: the session is over
    SEND_RPC = auto()
    END = auto()


_LOCAL = frozenset({InputKind.ANSWER, InputKind.REFUSE, InputKind.SEND_RPC, InputKind.END})

S = SessionState
K = InputKind
_TRANSITIONS: dict[tuple[SessionState, InputKind], SessionState] = {
    (S.AWAIT_INFORM, K.INFORM): S.CPE_REQUESTS,
    (S.CPE_REQUESTS, K.ANSWER): S.CPE_REQUESTS,
    (S.CPE_REQUESTS, K.REFUSE): S.ENDED,
    (S.CPE_REQUESTS, K.CPE_REQUEST): S.CPE_REQUESTS,
    # §3.7.1: an empty POST says the CPE has no more requests.
    (S.CPE_REQUESTS, K.EMPTY_POST): S.ACS_IDLE,
    (S.ACS_IDLE, K.SEND_RPC): S.AWAIT_RESPONSE,
    # §3.7.1: the ACS ends the session with an empty HTTP response (204).
    (S.ACS_IDLE, K.END): S.ENDED,
    (S.AWAIT_RESPONSE, K.RESPONSE): S.ACS_IDLE,
}

# A.3.1 / A.4: the response each ACS request must get (a Fault is always allowed).
_RESPONSE_FOR: dict[type, type] = {
    SetParameterValues: SetParameterValuesResponse,
    GetParameterValues: GetParameterValuesResponse,
    GetParameterNames: GetParameterNamesResponse,
    AddObject: AddObjectResponse,
    DeleteObject: DeleteObjectResponse,
    Reboot: RebootResponse,
    FactoryReset: FactoryResetResponse,
    Download: DownloadResponse,
    GetRPCMethods: GetRPCMethodsResponse,
}
# The answer the ACS owes each CPE request.
_ANSWER_FOR: dict[type, type] = {
    Inform: InformResponse,
    TransferComplete: TransferCompleteResponse,
    GetRPCMethods: GetRPCMethodsResponse,
}
_CPE_REQUESTS = (TransferComplete, GetRPCMethods)
_RESPONSES = frozenset({*_RESPONSE_FOR.values(), Fault})


@dataclass(frozen=True, slots=True)
class InformReceived:
    inform: Inform
    cwmp_id: str | None


@dataclass(frozen=True, slots=True)
class CpeRequestReceived:
    message: Message
    cwmp_id: str | None


@dataclass(frozen=True, slots=True)
class EmptyPost:
    pass


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    request: Message
    response: Message
    cwmp_id: str | None


Received: TypeAlias = InformReceived | CpeRequestReceived | EmptyPost | ResponseReceived


def _kind_of(envelope: Envelope | None) -> InputKind:
    if envelope is None:
        return K.EMPTY_POST
    body = envelope.body
    if isinstance(body, Inform):
        return K.INFORM
    if isinstance(body, _CPE_REQUESTS):
        return K.CPE_REQUEST
    if type(body) in _RESPONSES:
        return K.RESPONSE
    return K.UNEXPECTED


class CwmpSession:
    """One CWMP session between the ACS and one CPE."""

    def __init__(self, session_id: str, now: float, idle_timeout: float) -> None:
        self.session_id = session_id
        self.idle_timeout = idle_timeout
        self.state = SessionState.AWAIT_INFORM
        self.last_activity = now
        self.device_id: DeviceId | None = None
        self.events: tuple[EventStruct, ...] = ()
        # Replies use the CWMP version the CPE spoke in its Inform (§3.5).
        self.version = CwmpVersion.V1_0
        self.pending_request: Message | None = None  # our RPC awaiting a response
        self._pending_id: str | None = None
        self._owed: Message | None = None  # CPE request awaiting our answer
        self._owed_id: str | None = None

    # ------------------------------------------------------------------ clock

    def is_expired(self, now: float) -> bool:
        return now - self.last_activity > self.idle_timeout

    # ------------------------------------------------------------------ table

    def _step(self, kind: InputKind, what: str) -> None:
        nxt = _TRANSITIONS.get((self.state, kind))
        if nxt is None:
            if kind in _LOCAL:
                raise CwmpUsageError(f"{what} not allowed in {self.state.name}")
            code = FAULT_RETRY_REQUEST if self.state is S.ENDED else FAULT_INVALID_ARGUMENTS
            was = self.state
            self._fail()
            raise CwmpProtocolError(code, f"{what} not allowed in {was.name}")
        self.state = nxt

    def _fail(self) -> None:
        self.state = S.ENDED
        self.pending_request = None
        self._owed = None

    # ------------------------------------------------------------------ CPE side

    def receive(self, envelope: Envelope | None, now: float) -> Received:
        """Feed one HTTP POST from the CPE; None is an empty POST."""
        if self.state is not S.ENDED and self.is_expired(now):
            self._fail()
            raise CwmpProtocolError(FAULT_RETRY_REQUEST, "session expired")
        if self._owed is not None:
            # The adapter must answer each CPE request before the next POST.
            raise CwmpUsageError("previous CPE request was not answered")
        kind = _kind_of(envelope)
        name = "empty POST" if envelope is None else type(envelope.body).__name__
        self._step(kind, name)
        self.last_activity = now
        if envelope is None:
            return EmptyPost()
        body = envelope.body
        if isinstance(body, Inform):
            self.device_id = body.device_id
            self.events = body.events
            self.version = envelope.version
            self._owed, self._owed_id = body, envelope.cwmp_id
            return InformReceived(body, envelope.cwmp_id)
        if kind is K.CPE_REQUEST:
            self._owed, self._owed_id = body, envelope.cwmp_id
            return CpeRequestReceived(body, envelope.cwmp_id)
        return self._pair(body, envelope.cwmp_id)

    def _pair(self, response: Message, cwmp_id: str | None) -> ResponseReceived:
        request = self.pending_request
        assert request is not None  # AWAIT_RESPONSE always has one
        if not isinstance(response, Fault) and type(response) is not _RESPONSE_FOR[type(request)]:
            self._fail()
            raise CwmpProtocolError(
                FAULT_INVALID_ARGUMENTS,
                f"{type(response).__name__} does not answer {type(request).__name__}",
            )
        # §3.5: the CPE echoes cwmp:ID. Sloppy CPEs drop it; a different one
        # means the response belongs to something else.
        if cwmp_id is not None and cwmp_id != self._pending_id:
            self._fail()
            raise CwmpProtocolError(
                FAULT_INVALID_ARGUMENTS, f"cwmp:ID {cwmp_id!r} != sent {self._pending_id!r}"
            )
        self.pending_request = None
        self._pending_id = None
        return ResponseReceived(request, response, cwmp_id)

    # ------------------------------------------------------------------ ACS side

    def answer(self, message: Message) -> Envelope:
        """Answer the CPE request just received, echoing its cwmp:ID.

        A Fault is always allowed; a Fault in answer to the Inform (e.g. 8005)
        ends the session.
        """
        owed = self._owed
        if owed is None:
            raise CwmpUsageError(f"no CPE request to answer in {self.state.name}")
        if isinstance(message, Fault):
            kind = K.REFUSE if isinstance(owed, Inform) else K.ANSWER
        elif type(message) is _ANSWER_FOR[type(owed)]:
            kind = K.ANSWER
        else:
            raise CwmpUsageError(f"{type(message).__name__} does not answer {type(owed).__name__}")
        self._step(kind, type(message).__name__)
        self._owed = None
        return Envelope(message, self._owed_id, self.version)

    def send_rpc(self, request: Message, cwmp_id: str, hold_requests: bool = False) -> Envelope:
        """Send one ACS request in the current HTTP response (A.3.2, A.4)."""
        if type(request) not in _RESPONSE_FOR:
            raise CwmpUsageError(f"{type(request).__name__} is not an ACS request")
        self._step(K.SEND_RPC, type(request).__name__)
        self.pending_request = request
        self._pending_id = cwmp_id
        return Envelope(request, cwmp_id, self.version, hold_requests)

    def end(self) -> None:
        """End the session; the adapter answers HTTP 204 No Content."""
        self._step(K.END, "end")
