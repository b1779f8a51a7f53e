"""CWMP codec: vectors, round-trips, hardening, and properties."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from daemon.errors import DecodeError
from daemon.tr069 import codec
from daemon.tr069.codec import (
    AddObject,
    AddObjectResponse,
    CwmpDecodeError,
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
    ParameterInfo,
    ParameterValue,
    Reboot,
    RebootResponse,
    SetParameterFault,
    SetParameterValues,
    SetParameterValuesResponse,
    TransferComplete,
    TransferCompleteResponse,
    decode,
    encode,
    fault_for,
)
from tests.vectors.tr069.expected import ATTACKS, VECTORS

VECTOR_DIR = Path(__file__).parent.parent / "vectors" / "tr069"
CI = settings(derandomize=True, max_examples=200, deadline=None)

SOAP = codec.SOAP_ENV_NS
CWMP = CwmpVersion.V1_0.namespace


def envelope_xml(body: str, ns: str = CWMP, header: str = "") -> bytes:
    return (
        f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:cwmp="{ns}">'
        f"{header}<soap:Body>{body}</soap:Body></soap:Envelope>"
    ).encode()


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_decodes_to_expected(name: str) -> None:
    assert decode((VECTOR_DIR / name).read_bytes()) == VECTORS[name]


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_round_trips_through_encode(name: str) -> None:
    expected = VECTORS[name]
    assert decode(encode(expected)) == expected


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_vectors_are_refused(name: str) -> None:
    with pytest.raises(CwmpDecodeError):
        decode((VECTOR_DIR / name).read_bytes())


@pytest.mark.parametrize("name", ["billion_laughs.xml", "xxe_file.xml", "xxe_network.xml"])
def test_dtd_hidden_in_utf16_is_refused(name: str) -> None:
    data = (VECTOR_DIR / name).read_text().replace('<?xml version="1.0"?>', "")
    with pytest.raises(CwmpDecodeError):
        decode(data.encode("utf-16"))


def test_every_vector_file_is_in_the_table() -> None:
    files = {p.name for p in VECTOR_DIR.glob("*.xml")}
    assert files == set(VECTORS) | set(ATTACKS)


# --------------------------------------------------------------------------- every message type

ONE_OF_EACH: list[Message] = [
    Inform(
        DeviceId("M", "OUI", "PC", "SN"),
        (EventStruct("0 BOOTSTRAP"), EventStruct("M Download", "ck")),
        1,
        "2026-01-01T00:00:00Z",
        2,
        (ParameterValue("A.B", "1", "xsd:int"),),
    ),
    TransferComplete("ck", 9010, "Download failure", "t0", "t1"),
    GetRPCMethods(),
    SetParameterValues(
        (ParameterValue("A.B", "x"), ParameterValue("A.C", "true", "xsd:boolean")), "pk"
    ),
    GetParameterValues(("Device.", "Device.DeviceInfo.UpTime")),
    GetParameterNames("Device.WiFi.", True),
    AddObject("Device.WiFi.SSID.", "pk"),
    DeleteObject("Device.WiFi.SSID.3.", "pk"),
    Reboot("rb"),
    FactoryReset(),
    Download("ck", "1 Firmware Upgrade Image", "http://x/fw", "u", "p", 10, "fw.bin", 5, "s", "f"),
    SetParameterValuesResponse(1),
    GetParameterValuesResponse((ParameterValue("A", ""),)),
    GetParameterNamesResponse((ParameterInfo("A.", False), ParameterInfo("A.B", True))),
    AddObjectResponse(4, 0),
    DeleteObjectResponse(0),
    RebootResponse(),
    FactoryResetResponse(),
    DownloadResponse(0, "t0", "t1"),
    GetRPCMethodsResponse(("Inform", "TransferComplete")),
    InformResponse(1),
    TransferCompleteResponse(),
    Fault(9003, "Invalid arguments", (SetParameterFault("A.B", 9007, "bad"),)),
]


def test_one_of_each_covers_the_message_union() -> None:
    assert {type(m) for m in ONE_OF_EACH} == set(typing.get_args(Message))


@pytest.mark.parametrize("message", ONE_OF_EACH, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("version", list(CwmpVersion), ids=lambda v: v.name)
def test_every_message_round_trips(message: Message, version: CwmpVersion) -> None:
    env = Envelope(message, "id-1", version, hold_requests=True)
    assert decode(encode(env)) == env


# --------------------------------------------------------------------------- encode form


def test_encode_is_canonical() -> None:
    data = encode(
        Envelope(
            GetParameterValuesResponse(
                (ParameterValue("A", "1", "xsd:int"), ParameterValue("B", "x"))
            ),
            "42",
            CwmpVersion.V1_2,
        )
    )
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = etree.fromstring(data)
    assert root.tag == f"{{{SOAP}}}Envelope"
    assert root.nsmap["cwmp"] == CwmpVersion.V1_2.namespace
    assert root.nsmap["SOAP-ENC"] == codec.SOAP_ENC_NS
    header_id = root.find(f"{{{SOAP}}}Header/{{{CwmpVersion.V1_2.namespace}}}ID")
    assert header_id is not None and header_id.text == "42"
    assert header_id.get(f"{{{SOAP}}}mustUnderstand") == "1"
    plist = root.find(".//ParameterList")
    assert plist is not None
    assert plist.get(f"{{{codec.SOAP_ENC_NS}}}arrayType") == "cwmp:ParameterValueStruct[2]"
    types = [v.get(f"{{{codec.XSI_NS}}}type") for v in root.iter("Value")]
    assert types == ["xsd:int", "xsd:string"]


def test_no_header_without_id() -> None:
    assert b"Header" not in encode(Envelope(InformResponse()))


def test_encode_escapes_and_keeps_carriage_returns() -> None:
    tricky = "a&b<c>d\"e'f\r\ng ]]> "
    env = Envelope(SetParameterValues((ParameterValue("X", tricky),), tricky), tricky.strip())
    assert decode(encode(env)) == env


@pytest.mark.parametrize("bad", ["\x00", "a\x1fb", "\ufffe", "\uffff", "\ud800"])
def test_encode_refuses_non_xml_characters(bad: str) -> None:
    with pytest.raises(ValueError):
        encode(Envelope(Reboot(bad)))


@pytest.mark.parametrize(("code", "kind"), [(9005, "Client"), (8003, "Client"), (9002, "Server")])
def test_fault_encoding(code: int, kind: str) -> None:
    root = etree.fromstring(encode(Envelope(fault_for(code), "1")))
    fault = root.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert fault is not None
    assert fault.findtext("faultcode") == kind
    assert fault.findtext(f"detail/{{{CWMP}}}Fault/FaultCode") == str(code)


def test_fault_for_strings() -> None:
    assert fault_for(8005) == Fault(8005, "Retry request")
    assert fault_for(9005).string == "Invalid parameter name"
    assert fault_for(9850).string == "Vendor defined fault"
    assert fault_for(9003, "custom") == Fault(9003, "custom")


# --------------------------------------------------------------------------- liberal decode


def test_header_hold_requests_and_version_from_fault_detail() -> None:
    body = (
        "<soap:Fault><faultcode>soap:Server</faultcode><faultstring>x</faultstring><detail>"
        f'<f:Fault xmlns:f="{CwmpVersion.V1_3.namespace}"><FaultCode> 9002 </FaultCode>'
        "<FaultString>Internal error</FaultString></f:Fault></detail></soap:Fault>"
    )
    header = (
        '<soap:Header><cwmp:ID soap:mustUnderstand="1">7</cwmp:ID>'
        "<cwmp:HoldRequests>true</cwmp:HoldRequests></soap:Header>"
    )
    env = decode(envelope_xml(body, header=header))
    assert env == Envelope(Fault(9002, "Internal error"), "7", CwmpVersion.V1_3, True)


def test_value_without_type_and_qualified_children() -> None:
    body = (
        "<cwmp:GetParameterValuesResponse><cwmp:ParameterList>"
        "<cwmp:ParameterValueStruct><cwmp:Name>A</cwmp:Name><cwmp:Value>v</cwmp:Value>"
        "</cwmp:ParameterValueStruct></cwmp:ParameterList></cwmp:GetParameterValuesResponse>"
    )
    assert decode(envelope_xml(body)).body == GetParameterValuesResponse(
        (ParameterValue("A", "v"),)
    )


def test_leading_whitespace_and_bom_are_fine() -> None:
    data = b"\xef\xbb\xbf\n  " + envelope_xml("<cwmp:RebootResponse/>")
    assert decode(data).body == RebootResponse()


# --------------------------------------------------------------------------- refusals

BAD_DOCUMENTS = {
    "empty": b"",
    "whitespace": b"  \r\n\t ",
    "not xml": b"hello",
    "not an envelope": b"<a/>",
    "no body": f'<s:Envelope xmlns:s="{SOAP}"/>'.encode(),
    "empty body": envelope_xml(""),
    "unknown method": envelope_xml("<cwmp:Frobnicate/>"),
    "unknown namespace": envelope_xml("<x:Inform xmlns:x='urn:other'/>"),
    "cwmp-1-5 is not known": envelope_xml("<cwmp:RebootResponse/>", "urn:dslforum-org:cwmp-1-5"),
    "no namespace": envelope_xml("<RebootResponse/>"),
    "inform without device id": envelope_xml("<cwmp:Inform><Event/></cwmp:Inform>"),
    "inform without serial": envelope_xml(
        "<cwmp:Inform><DeviceId><OUI>A</OUI></DeviceId></cwmp:Inform>"
    ),
    "bad int": envelope_xml("<cwmp:SetParameterValuesResponse><Status>x</Status>"),
    "bad int 2": envelope_xml(
        "<cwmp:SetParameterValuesResponse><Status>1 2</Status></cwmp:SetParameterValuesResponse>"
    ),
    "unicode digits": envelope_xml(
        "<cwmp:SetParameterValuesResponse><Status>\u0661</Status></cwmp:SetParameterValuesResponse>"
    ),
    "missing status": envelope_xml(
        "<cwmp:SetParameterValuesResponse></cwmp:SetParameterValuesResponse>"
    ),
    "bad boolean": envelope_xml(
        "<cwmp:GetParameterNames><ParameterPath/><NextLevel>maybe</NextLevel></cwmp:GetParameterNames>"
    ),
    "fault without detail": envelope_xml("<soap:Fault><faultcode>Client</faultcode></soap:Fault>"),
    "undefined entity": envelope_xml("<cwmp:Reboot><CommandKey>&foo;</CommandKey></cwmp:Reboot>"),
    "struct without name": envelope_xml(
        "<cwmp:GetParameterValuesResponse><ParameterList><ParameterValueStruct><Value>1</Value>"
        "</ParameterValueStruct></ParameterList></cwmp:GetParameterValuesResponse>"
    ),
    "bad hold requests": envelope_xml(
        "<cwmp:RebootResponse/>",
        header="<soap:Header><cwmp:HoldRequests>2</cwmp:HoldRequests></soap:Header>",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_DOCUMENTS))
def test_bad_documents_raise_only_decode_error(name: str) -> None:
    with pytest.raises(CwmpDecodeError):
        decode(BAD_DOCUMENTS[name])


def test_decode_error_is_a_decode_error() -> None:
    assert issubclass(CwmpDecodeError, DecodeError)


def test_too_many_parameter_structs() -> None:
    item = "<ParameterValueStruct><Name>A</Name><Value>1</Value></ParameterValueStruct>"
    body = (
        "<cwmp:GetParameterValuesResponse><ParameterList>"
        + item * (codec.MAX_ARRAY_ITEMS + 1)
        + "</ParameterList></cwmp:GetParameterValuesResponse>"
    )
    with pytest.raises(CwmpDecodeError, match="more than"):
        decode(envelope_xml(body))


def test_depth_limit_is_exact() -> None:
    # Envelope(1) Body(2) Reboot(3) CommandKey(4): pad the rest with <a>.
    def doc(depth: int) -> bytes:
        pad = depth - 4
        return envelope_xml(
            "<cwmp:Reboot><CommandKey>" + "<a>" * pad + "</a>" * pad + "</CommandKey></cwmp:Reboot>"
        )

    assert decode(doc(codec.MAX_DEPTH)).body == Reboot("")
    with pytest.raises(CwmpDecodeError, match="deeper"):
        decode(doc(codec.MAX_DEPTH + 1))


# --------------------------------------------------------------------------- properties

_chars = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cn")) | st.sampled_from(
    "\t\n\r &<>\"']"
)
raw_text = st.text(_chars, max_size=12)
clean_text = raw_text.map(str.strip)
ints = st.integers(min_value=-(2**31), max_value=2**32)
XSD_TYPES = ["xsd:int", "xsd:unsignedInt", "xsd:boolean", "xsd:dateTime", "xsd:base64Binary"]
parameter_values = st.one_of(
    st.builds(ParameterValue, clean_text, raw_text, st.just("xsd:string")),
    st.builds(ParameterValue, clean_text, clean_text, st.sampled_from(XSD_TYPES)),
)
pv_tuples = st.lists(parameter_values, max_size=4).map(tuple)
str_tuples = st.lists(clean_text, max_size=4).map(tuple)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Inform,
        st.builds(DeviceId, clean_text, clean_text, clean_text, clean_text),
        st.lists(st.builds(EventStruct, clean_text, raw_text), max_size=3).map(tuple),
        ints,
        clean_text,
        ints,
        pv_tuples,
    ),
    st.builds(TransferComplete, raw_text, ints, clean_text, clean_text, clean_text),
    st.just(GetRPCMethods()),
    st.builds(SetParameterValues, pv_tuples, raw_text),
    st.builds(GetParameterValues, str_tuples),
    st.builds(GetParameterNames, clean_text, st.booleans()),
    st.builds(AddObject, clean_text, raw_text),
    st.builds(DeleteObject, clean_text, raw_text),
    st.builds(Reboot, raw_text),
    st.just(FactoryReset()),
    st.builds(
        Download,
        raw_text,
        clean_text,
        clean_text,
        raw_text,
        raw_text,
        ints,
        clean_text,
        ints,
        clean_text,
        clean_text,
    ),
    st.builds(SetParameterValuesResponse, ints),
    st.builds(GetParameterValuesResponse, pv_tuples),
    st.builds(
        GetParameterNamesResponse,
        st.lists(st.builds(ParameterInfo, clean_text, st.booleans()), max_size=4).map(tuple),
    ),
    st.builds(AddObjectResponse, ints, ints),
    st.builds(DeleteObjectResponse, ints),
    st.just(RebootResponse()),
    st.just(FactoryResetResponse()),
    st.builds(DownloadResponse, ints, clean_text, clean_text),
    st.builds(GetRPCMethodsResponse, str_tuples),
    st.builds(InformResponse, ints),
    st.just(TransferCompleteResponse()),
    st.builds(
        Fault,
        ints,
        clean_text,
        st.lists(st.builds(SetParameterFault, clean_text, ints, clean_text), max_size=3).map(tuple),
    ),
)
envelopes = st.builds(
    Envelope,
    messages,
    st.none() | clean_text,
    st.sampled_from(list(CwmpVersion)),
    st.booleans(),
)


@CI
@given(envelopes)
def test_property_round_trip(env: Envelope) -> None:
    assert decode(encode(env)) == env


@CI
@given(st.binary(max_size=512))
def test_property_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except CwmpDecodeError:
        pass


_SEEDS = [(VECTOR_DIR / n).read_bytes() for n in sorted(VECTORS)]


@CI
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=3)), min_size=1, max_size=4),
)
def test_property_mutated_vectors_raise_only_decode_error(
    seed: bytes, edits: list[tuple[int, bytes]]
) -> None:
    data = bytearray(seed)
    for pos, patch in edits:
        at = pos % (len(data) + 1)
        data[at : at + len(patch)] = patch
    try:
        decode(bytes(data))
    except CwmpDecodeError:
        pass
