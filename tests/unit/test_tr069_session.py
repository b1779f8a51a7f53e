"""CWMP session state machine: the whole transition table, pairing, expiry."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daemon.errors import WireError
from daemon.tr069 import session as session_mod
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
    ParameterValue,
    Reboot,
    RebootResponse,
    SetParameterValues,
    SetParameterValuesResponse,
    TransferComplete,
    TransferCompleteResponse,
)
from daemon.tr069.session import (
    CpeRequestReceived,
    CwmpProtocolError,
    CwmpSession,
    CwmpUsageError,
    EmptyPost,
    InformReceived,
    InputKind,
    ResponseReceived,
    SessionState,
)

S = SessionState
K = InputKind
T0 = 1000.0
TIMEOUT = 30.0

INFORM = Inform(
    DeviceId("Nokia", "ALCL", "G-010G-Q", "ALCL1A2B3C4D"),
    (EventStruct("0 BOOTSTRAP"), EventStruct("1 BOOT")),
    1,
    "2026-01-01T00:00:00Z",
    0,
    (),
)
SPV = SetParameterValues((ParameterValue("Device.X", "1"),), "k")
TC = TransferComplete("ck", 0, "", "t0", "t1")


def new() -> CwmpSession:
    return CwmpSession("s1", T0, TIMEOUT)


def state_of(s: CwmpSession) -> SessionState:
    return s.state  # a call, so mypy does not narrow across method calls


def inform_env(cwmp_id: str | None = "1", version: CwmpVersion = CwmpVersion.V1_2) -> Envelope:
    return Envelope(INFORM, cwmp_id, version)


def reach(state: SessionState) -> CwmpSession:
    """A session in `state` with nothing owed by either side."""
    s = new()
    if state is S.AWAIT_INFORM:
        return s
    s.receive(inform_env(), T0)
    s.answer(InformResponse())
    if state is S.CPE_REQUESTS:
        return s
    s.receive(None, T0)
    if state is S.ACS_IDLE:
        return s
    s.send_rpc(SPV, "rpc-1")
    if state is S.AWAIT_RESPONSE:
        return s
    s.receive(Envelope(SetParameterValuesResponse(0), "rpc-1"), T0)
    s.end()
    assert state is S.ENDED
    return s


# --------------------------------------------------------------------------- happy path


def test_full_session() -> None:
    s = new()
    got = s.receive(inform_env("a1"), T0 + 1)
    assert got == InformReceived(INFORM, "a1")
    assert s.device_id == INFORM.device_id and s.events == INFORM.events
    assert s.version is CwmpVersion.V1_2
    assert s.answer(InformResponse()) == Envelope(InformResponse(), "a1", CwmpVersion.V1_2)
    assert state_of(s) is S.CPE_REQUESTS

    assert s.receive(Envelope(TC, "a2"), T0 + 2) == CpeRequestReceived(TC, "a2")
    assert s.answer(TransferCompleteResponse()).cwmp_id == "a2"
    assert s.receive(Envelope(GetRPCMethods(), "a3"), T0 + 3) == CpeRequestReceived(
        GetRPCMethods(), "a3"
    )
    s.answer(GetRPCMethodsResponse(("Inform",)))

    assert s.receive(None, T0 + 4) == EmptyPost()
    assert state_of(s) is S.ACS_IDLE
    out = s.send_rpc(SPV, "r1", hold_requests=True)
    assert out == Envelope(SPV, "r1", CwmpVersion.V1_2, True)
    assert s.pending_request == SPV and s.state is S.AWAIT_RESPONSE

    resp = Envelope(SetParameterValuesResponse(0), "r1")
    assert s.receive(resp, T0 + 5) == ResponseReceived(SPV, SetParameterValuesResponse(0), "r1")
    assert s.pending_request is None and s.state is S.ACS_IDLE
    s.end()
    assert s.state is S.ENDED
    assert s.last_activity == T0 + 5


PAIRS: list[tuple[Message, Message]] = [
    (SPV, SetParameterValuesResponse(1)),
    (GetParameterValues(("Device.",)), GetParameterValuesResponse(())),
    (GetParameterNames("Device.", True), GetParameterNamesResponse(())),
    (AddObject("Device.X."), AddObjectResponse(2, 0)),
    (DeleteObject("Device.X.2."), DeleteObjectResponse(0)),
    (Reboot("r"), RebootResponse()),
    (FactoryReset(), FactoryResetResponse()),
    (Download("c", "1 Firmware Upgrade Image", "http://x"), DownloadResponse(1, "", "")),
    (GetRPCMethods(), GetRPCMethodsResponse(())),
]


@pytest.mark.parametrize(("request_", "response"), PAIRS, ids=lambda m: type(m).__name__)
def test_each_rpc_pairs_with_its_response_or_a_fault(request_: Message, response: Message) -> None:
    for answer in (response, Fault(9002, "Internal error")):
        s = reach(S.ACS_IDLE)
        s.send_rpc(request_, "x")
        got = s.receive(Envelope(answer, "x"), T0)
        assert got == ResponseReceived(request_, answer, "x")


def test_wrong_response_type_is_a_protocol_error() -> None:
    s = reach(S.AWAIT_RESPONSE)  # SetParameterValues pending
    with pytest.raises(CwmpProtocolError) as err:
        s.receive(Envelope(GetParameterValuesResponse(()), "rpc-1"), T0)
    assert err.value.fault_code == 8003
    assert s.state is S.ENDED


def test_missing_cwmp_id_on_response_is_accepted() -> None:
    s = reach(S.AWAIT_RESPONSE)
    got = s.receive(Envelope(SetParameterValuesResponse(0), None), T0)
    assert isinstance(got, ResponseReceived) and got.cwmp_id is None


def test_different_cwmp_id_on_response_is_refused() -> None:
    s = reach(S.AWAIT_RESPONSE)
    with pytest.raises(CwmpProtocolError) as err:
        s.receive(Envelope(SetParameterValuesResponse(0), "rpc-2"), T0)
    assert err.value.fault_code == 8003
    assert isinstance(err.value, WireError)


def test_fault_answer_to_inform_ends_session() -> None:
    s = new()
    s.receive(inform_env("i"), T0)
    out = s.answer(Fault(8005, "Retry request"))
    assert out.cwmp_id == "i" and s.state is S.ENDED


def test_fault_answer_to_cpe_request_keeps_session() -> None:
    s = reach(S.CPE_REQUESTS)
    s.receive(Envelope(TC, "t"), T0)
    s.answer(Fault(8002, "Internal error"))
    assert s.state is S.CPE_REQUESTS


# --------------------------------------------------------------------------- the table

ALLOWED = {
    (S.AWAIT_INFORM, K.INFORM): S.CPE_REQUESTS,
    (S.CPE_REQUESTS, K.ANSWER): S.CPE_REQUESTS,
    (S.CPE_REQUESTS, K.REFUSE): S.ENDED,
    (S.CPE_REQUESTS, K.CPE_REQUEST): S.CPE_REQUESTS,
    (S.CPE_REQUESTS, K.EMPTY_POST): S.ACS_IDLE,
    (S.ACS_IDLE, K.SEND_RPC): S.AWAIT_RESPONSE,
    (S.ACS_IDLE, K.END): S.ENDED,
    (S.AWAIT_RESPONSE, K.RESPONSE): S.ACS_IDLE,
}


def test_table_is_exactly_the_documented_one() -> None:
    assert session_mod._TRANSITIONS == ALLOWED


@pytest.mark.parametrize(("state", "kind"), sorted(ALLOWED, key=str))
def test_every_allowed_transition(state: SessionState, kind: InputKind) -> None:
    if state is S.AWAIT_INFORM:
        s = new()
        s.receive(inform_env(), T0)
    elif kind is K.REFUSE:
        s = new()
        s.receive(inform_env(), T0)
        s.answer(Fault(8005, "Retry request"))
    elif kind is K.ANSWER:
        s = reach(state)
        s.receive(Envelope(TC, "t"), T0)
        s.answer(TransferCompleteResponse())
    else:
        s = reach(state)
        PEER[kind](s) if kind in PEER else LOCAL[kind](s)
    assert s.state is ALLOWED[(state, kind)]


PEER: dict[InputKind, Callable[[CwmpSession], object]] = {
    K.INFORM: lambda s: s.receive(inform_env(), T0),
    K.CPE_REQUEST: lambda s: s.receive(Envelope(TC, "t"), T0),
    K.EMPTY_POST: lambda s: s.receive(None, T0),
    K.RESPONSE: lambda s: s.receive(Envelope(SetParameterValuesResponse(0), "rpc-1"), T0),
    K.UNEXPECTED: lambda s: s.receive(Envelope(InformResponse(), "u"), T0),
}
LOCAL: dict[InputKind, Callable[[CwmpSession], object]] = {
    K.SEND_RPC: lambda s: s.send_rpc(Reboot(), "r"),
    K.END: lambda s: s.end(),
    K.ANSWER: lambda s: s.answer(TransferCompleteResponse()),
    K.REFUSE: lambda s: s.answer(Fault(8005, "Retry request")),
}

ILLEGAL_PEER = [(st, k) for st in S for k in PEER if (st, k) not in ALLOWED]
ILLEGAL_LOCAL = [(st, k) for st in S for k in (K.SEND_RPC, K.END) if (st, k) not in ALLOWED]


@pytest.mark.parametrize(("state", "kind"), ILLEGAL_PEER, ids=str)
def test_illegal_peer_input_is_a_protocol_error(state: SessionState, kind: InputKind) -> None:
    s = reach(state)
    with pytest.raises(CwmpProtocolError) as err:
        PEER[kind](s)
    assert err.value.fault_code == (8005 if state is S.ENDED else 8003)
    assert s.state is S.ENDED


@pytest.mark.parametrize(("state", "kind"), ILLEGAL_LOCAL, ids=str)
def test_illegal_local_call_is_a_usage_error(state: SessionState, kind: InputKind) -> None:
    s = reach(state)
    with pytest.raises(CwmpUsageError):
        LOCAL[kind](s)
    assert s.state is state


def test_named_illegal_cases() -> None:
    # Duplicate Inform mid-session.
    s = reach(S.CPE_REQUESTS)
    with pytest.raises(CwmpProtocolError, match="Inform"):
        s.receive(inform_env(), T0)
    # Empty POST while our RPC is outstanding.
    s = reach(S.AWAIT_RESPONSE)
    with pytest.raises(CwmpProtocolError) as err:
        s.receive(None, T0)
    assert err.value.fault_code == 8003
    # A response before any RPC was sent.
    s = reach(S.CPE_REQUESTS)
    with pytest.raises(CwmpProtocolError):
        s.receive(Envelope(RebootResponse(), "x"), T0)
    # Fresh Inform on an ended session: the adapter must open a new session.
    s = reach(S.ENDED)
    with pytest.raises(CwmpProtocolError) as err:
        s.receive(inform_env(), T0)
    assert err.value.fault_code == 8005


def test_local_misuse() -> None:
    s = new()
    with pytest.raises(CwmpUsageError):
        s.answer(InformResponse())  # nothing to answer
    s.receive(inform_env(), T0)
    with pytest.raises(CwmpUsageError):
        s.answer(TransferCompleteResponse())  # wrong answer for an Inform
    with pytest.raises(CwmpUsageError):
        s.receive(None, T0)  # Inform not answered yet
    s.answer(InformResponse())
    s.receive(None, T0)
    with pytest.raises(CwmpUsageError):
        s.send_rpc(InformResponse(), "x")  # not an ACS request
    assert s.state is S.ACS_IDLE


# --------------------------------------------------------------------------- expiry


def test_expiry() -> None:
    s = new()
    assert not s.is_expired(T0 + TIMEOUT)
    assert s.is_expired(T0 + TIMEOUT + 0.001)
    s.receive(inform_env(), T0 + 10)
    s.answer(InformResponse())
    assert not s.is_expired(T0 + 10 + TIMEOUT)
    with pytest.raises(CwmpProtocolError) as err:
        s.receive(None, T0 + 10 + TIMEOUT + 1)
    assert err.value.fault_code == 8005
    assert s.state is S.ENDED


def test_activity_refreshes_expiry() -> None:
    s = reach(S.AWAIT_RESPONSE)
    s.receive(Envelope(SetParameterValuesResponse(0)), T0 + 25)
    s.send_rpc(Reboot(), "r2")
    got = s.receive(Envelope(RebootResponse(), "r2"), T0 + 50)
    assert isinstance(got, ResponseReceived)
