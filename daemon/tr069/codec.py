"""CWMP (TR-069) SOAP codec: bytes <-> frozen dataclasses.

Owns the wire form of every CWMP RPC turnup speaks, in both directions, so the
ACS adapter and the CPE emulators share one codec (TR-069 Amendment 6, Annex A).

Rules:
- Sans-IO: no sockets, clocks, globals with state, or logging.
- `decode` is liberal in what it accepts (real CPEs are sloppy: any SOAP
  prefixes, no Header, missing or wrong `soapenc:arrayType`, whitespace around
  names and numbers) but hardened: no DTDs, no entities, no network, bounded
  depth and array sizes. Bad input raises `CwmpDecodeError` and nothing else.
- `encode` is strict and canonical: fixed prefixes, `cwmp:ID` with
  `mustUnderstand="1"`, `arrayType` on every array, `xsi:type` on every value.
- Whitespace: names, codes, numbers, booleans, times and types are stripped;
  `xsd:string` values, CommandKey and ParameterKey are kept byte for byte
  (keys are echoed back verbatim; a string value may mean its spaces).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias

from lxml import etree

from daemon.errors import DecodeError

SOAP_ENV_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENC_NS = "http://schemas.xmlsoap.org/soap/encoding/"
XSD_NS = "http://www.w3.org/2001/XMLSchema"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

MAX_DEPTH = 32
MAX_ARRAY_ITEMS = 10_000


class CwmpDecodeError(DecodeError):
    """The peer sent something that is not a CWMP message we understand."""


class CwmpVersion(Enum):
    """CWMP namespace versions, urn:dslforum-org:cwmp-1-N (TR-069 §3.5)."""

    V1_0 = "urn:dslforum-org:cwmp-1-0"
    V1_1 = "urn:dslforum-org:cwmp-1-1"
    V1_2 = "urn:dslforum-org:cwmp-1-2"
    V1_3 = "urn:dslforum-org:cwmp-1-3"
    V1_4 = "urn:dslforum-org:cwmp-1-4"

    @property
    def namespace(self) -> str:
        return self.value


# --------------------------------------------------------------------------- structs


@dataclass(frozen=True, slots=True)
class DeviceId:
    """DeviceIdStruct (TR-069 A.3.3.1)."""

    manufacturer: str
    oui: str
    product_class: str
    serial_number: str


@dataclass(frozen=True, slots=True)
class EventStruct:
    """EventStruct (A.3.3.1); code like "0 BOOTSTRAP" or "M Download"."""

    code: str
    command_key: str = ""


@dataclass(frozen=True, slots=True)
class ParameterValue:
    """ParameterValueStruct (A.3.2.1); `xsd_type` is the `xsi:type` of Value."""

    name: str
    value: str
    xsd_type: str = "xsd:string"


@dataclass(frozen=True, slots=True)
class ParameterInfo:
    """ParameterInfoStruct (A.3.2.3)."""

    name: str
    writable: bool


@dataclass(frozen=True, slots=True)
class SetParameterFault:
    """SetParameterValuesFault entry of a 9003 fault detail (A.5.1)."""

    name: str
    code: int
    string: str


# --------------------------------------------------------------------------- CPE -> ACS


@dataclass(frozen=True, slots=True)
class Inform:
    """Inform (A.3.3.1): opens every session."""

    device_id: DeviceId
    events: tuple[EventStruct, ...]
    max_envelopes: int
    current_time: str
    retry_count: int
    parameters: tuple[ParameterValue, ...]


@dataclass(frozen=True, slots=True)
class TransferComplete:
    """TransferComplete (A.3.3.2); fault_code 0 means success."""

    command_key: str
    fault_code: int
    fault_string: str
    start_time: str
    complete_time: str


@dataclass(frozen=True, slots=True)
class GetRPCMethods:
    """GetRPCMethods (A.3.1.1), sent by either side."""


# --------------------------------------------------------------------------- ACS -> CPE


@dataclass(frozen=True, slots=True)
class SetParameterValues:
    """SetParameterValues (A.3.2.1)."""

    parameters: tuple[ParameterValue, ...]
    parameter_key: str = ""


@dataclass(frozen=True, slots=True)
class GetParameterValues:
    """GetParameterValues (A.3.2.2)."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GetParameterNames:
    """GetParameterNames (A.3.2.3)."""

    path: str
    next_level: bool


@dataclass(frozen=True, slots=True)
class AddObject:
    """AddObject (A.3.2.6)."""

    object_name: str
    parameter_key: str = ""


@dataclass(frozen=True, slots=True)
class DeleteObject:
    """DeleteObject (A.3.2.7)."""

    object_name: str
    parameter_key: str = ""


@dataclass(frozen=True, slots=True)
class Reboot:
    """Reboot (A.3.2.9)."""

    command_key: str = ""


@dataclass(frozen=True, slots=True)
class FactoryReset:
    """FactoryReset (optional RPC, Annex A.4)."""


@dataclass(frozen=True, slots=True)
class Download:
    """Download (A.3.2.8)."""

    command_key: str
    file_type: str
    url: str
    username: str = ""
    password: str = ""
    file_size: int = 0
    target_file_name: str = ""
    delay_seconds: int = 0
    success_url: str = ""
    failure_url: str = ""


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class SetParameterValuesResponse:
    status: int


@dataclass(frozen=True, slots=True)
class GetParameterValuesResponse:
    parameters: tuple[ParameterValue, ...]


@dataclass(frozen=True, slots=True)
class GetParameterNamesResponse:
    parameters: tuple[ParameterInfo, ...]


@dataclass(frozen=True, slots=True)
class AddObjectResponse:
    instance_number: int
    status: int


@dataclass(frozen=True, slots=True)
class DeleteObjectResponse:
    status: int


@dataclass(frozen=True, slots=True)
class RebootResponse:
    pass


@dataclass(frozen=True, slots=True)
class FactoryResetResponse:
    pass


@dataclass(frozen=True, slots=True)
class DownloadResponse:
    status: int
    start_time: str
    complete_time: str


@dataclass(frozen=True, slots=True)
class GetRPCMethodsResponse:
    methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class InformResponse:
    max_envelopes: int = 1


@dataclass(frozen=True, slots=True)
class TransferCompleteResponse:
    pass


@dataclass(frozen=True, slots=True)
class Fault:
    """A SOAP Fault carrying a cwmp:Fault detail (A.5)."""

    code: int
    string: str
    set_parameter_faults: tuple[SetParameterFault, ...] = ()


Message: TypeAlias = (
    Inform
    | TransferComplete
    | GetRPCMethods
    | SetParameterValues
    | GetParameterValues
    | GetParameterNames
    | AddObject
    | DeleteObject
    | Reboot
    | FactoryReset
    | Download
    | SetParameterValuesResponse
    | GetParameterValuesResponse
    | GetParameterNamesResponse
    | AddObjectResponse
    | DeleteObjectResponse
    | RebootResponse
    | FactoryResetResponse
    | DownloadResponse
    | GetRPCMethodsResponse
    | InformResponse
    | TransferCompleteResponse
    | Fault
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One SOAP envelope: one message plus the CWMP header fields (§3.5)."""

    body: Message
    cwmp_id: str | None = None
    version: CwmpVersion = CwmpVersion.V1_0
    hold_requests: bool = False


# --------------------------------------------------------------------------- faults

# TR-069 A.5.1 (CPE faults) and A.5.2 (ACS faults). Client = the request was bad.
FAULT_STRINGS: dict[int, str] = {
    8000: "Method not supported",
    8001: "Request denied",
    8002: "Internal error",
    8003: "Invalid arguments",
    8004: "Resources exceeded",
    8005: "Retry request",
    9000: "Method not supported",
    9001: "Request denied",
    9002: "Internal error",
    9003: "Invalid arguments",
    9004: "Resources exceeded",
    9005: "Invalid parameter name",
    9006: "Invalid parameter type",
    9007: "Invalid parameter value",
    9008: "Attempt to set a non-writable parameter",
    9009: "Notification request rejected",
    9010: "Download failure",
    9011: "Upload failure",
    9012: "File transfer server authentication failure",
    9013: "Unsupported protocol for file transfer",
    9014: "Download failure: unable to join multicast group",
    9015: "Download failure: unable to contact file server",
    9016: "Download failure: unable to access file",
    9017: "Download failure: unable to complete download",
    9018: "Download failure: file corrupted",
    9019: "Download failure: file authentication failure",
}
CLIENT_FAULTS = frozenset({8003, 9003, 9005, 9006, 9007, 9008})


def fault_for(code: int, text: str | None = None) -> Fault:
    """A Fault with the standard string for `code` unless `text` is given."""
    if text is None:
        if code in FAULT_STRINGS:
            text = FAULT_STRINGS[code]
        elif 8800 <= code <= 8899 or 9800 <= code <= 9899:
            text = "Vendor defined fault"
        else:
            text = "Unknown fault"
    return Fault(code, text)


def fault_code_kind(code: int) -> str:
    """SOAP faultcode for a CWMP fault code: "Client" or "Server" (A.5)."""
    return "Client" if code in CLIENT_FAULTS else "Server"


# --------------------------------------------------------------------------- decode

# House rule: XML is parsed with entities, DTDs and network off; comments and PIs
# are dropped so they cannot hide between a struct's fields.
_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    dtd_validation=False,
    load_dtd=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)
# Selects any element deeper than MAX_DEPTH; evaluated in C, one pass per level.
_TOO_DEEP = etree.XPath("boolean(" + "/*" * (MAX_DEPTH + 1) + ")")
_VERSIONS = {v.value: v for v in CwmpVersion}
_XSI_TYPE = "{" + XSI_NS + "}type"
_INT_RE = re.compile(r"\s*([+-]?[0-9]{1,19})\s*\Z", re.ASCII)
_TRUE = frozenset({"1", "true"})
_FALSE = frozenset({"0", "false"})

_El: TypeAlias = "etree._Element"


def _local(tag: str) -> str:
    return tag[tag.rfind("}") + 1 :]


def _namespace(tag: str) -> str:
    return tag[1 : tag.find("}")] if tag[:1] == "{" else ""


def _kids(el: _El) -> dict[str, _El]:
    """Element children by local name; the first of each name wins."""
    out: dict[str, _El] = {}
    for child in el:
        tag = child.tag
        if isinstance(tag, str):
            out.setdefault(tag[tag.rfind("}") + 1 :], child)
    return out


def _need(kids: dict[str, _El], name: str, where: str) -> _El:
    el = kids.get(name)
    if el is None:
        raise CwmpDecodeError(f"{where}: missing {name}")
    return el


def _raw(kids: dict[str, _El], name: str) -> str:
    el = kids.get(name)
    return "" if el is None else (el.text or "")


def _str(kids: dict[str, _El], name: str) -> str:
    el = kids.get(name)
    return "" if el is None else (el.text or "").strip()


def _req_str(kids: dict[str, _El], name: str, where: str) -> str:
    return (_need(kids, name, where).text or "").strip()


def _int_of(el: _El, where: str) -> int:
    m = _INT_RE.match(el.text or "")
    if m is None:
        raise CwmpDecodeError(f"{where}: not an integer: {(el.text or '')[:32]!r}")
    return int(m.group(1))


def _req_int(kids: dict[str, _El], name: str, where: str) -> int:
    return _int_of(_need(kids, name, where), f"{where}/{name}")


def _opt_int(kids: dict[str, _El], name: str, where: str, default: int) -> int:
    el = kids.get(name)
    return default if el is None else _int_of(el, f"{where}/{name}")


def _bool_of(el: _El, where: str) -> bool:
    text = (el.text or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise CwmpDecodeError(f"{where}: not a boolean: {text[:32]!r}")


def _items(el: _El | None, where: str) -> list[_El]:
    """Element children of an array; `arrayType` is ignored (often wrong)."""
    if el is None:
        return []
    if len(el) > MAX_ARRAY_ITEMS:
        raise CwmpDecodeError(f"{where}: more than {MAX_ARRAY_ITEMS} items")
    return [c for c in el if isinstance(c.tag, str)]


def _xsd_type(value_el: _El) -> str:
    t = value_el.get(_XSI_TYPE)
    if t is None:
        t = value_el.get("type")
        if t is None:
            return "xsd:string"
    t = t.strip()
    if not t:
        return "xsd:string"
    prefix, _, local = t.rpartition(":")
    if prefix != "xsd" and value_el.nsmap.get(prefix or None) == XSD_NS:
        return "xsd:" + local  # e.g. xs:int with xmlns:xs=XMLSchema
    return t


def _parameter_values(el: _El | None, where: str) -> tuple[ParameterValue, ...]:
    out: list[ParameterValue] = []
    for item in _items(el, where):
        name: str | None = None
        value_el: _El | None = None
        for child in item:
            tag = child.tag
            if not isinstance(tag, str):
                continue
            local = tag[tag.rfind("}") + 1 :]
            if local == "Name":
                name = (child.text or "").strip()
            elif local == "Value":
                value_el = child
        if name is None:
            raise CwmpDecodeError(f"{where}: ParameterValueStruct without Name")
        if value_el is None:
            out.append(ParameterValue(name, ""))
            continue
        xsd_type = _xsd_type(value_el)
        value = value_el.text or ""
        if xsd_type != "xsd:string":
            value = value.strip()
        out.append(ParameterValue(name, value, xsd_type))
    return tuple(out)


def _strings(el: _El | None, where: str) -> tuple[str, ...]:
    return tuple((c.text or "").strip() for c in _items(el, where))


def _dec_inform(el: _El) -> Inform:
    w = "Inform"
    kids = _kids(el)
    dev = _kids(_need(kids, "DeviceId", w))
    device_id = DeviceId(
        manufacturer=_str(dev, "Manufacturer"),
        oui=_req_str(dev, "OUI", "DeviceId"),
        product_class=_str(dev, "ProductClass"),
        serial_number=_req_str(dev, "SerialNumber", "DeviceId"),
    )
    events = []
    for item in _items(kids.get("Event"), "Inform/Event"):
        ev = _kids(item)
        events.append(EventStruct(_req_str(ev, "EventCode", "EventStruct"), _raw(ev, "CommandKey")))
    return Inform(
        device_id=device_id,
        events=tuple(events),
        # A.3.3.1 makes these mandatory; sloppy CPEs drop them, defaults are safe.
        max_envelopes=_opt_int(kids, "MaxEnvelopes", w, 1),
        current_time=_str(kids, "CurrentTime"),
        retry_count=_opt_int(kids, "RetryCount", w, 0),
        parameters=_parameter_values(kids.get("ParameterList"), "Inform/ParameterList"),
    )


def _dec_transfer_complete(el: _El) -> TransferComplete:
    w = "TransferComplete"
    kids = _kids(el)
    fault = kids.get("FaultStruct")
    fk = _kids(fault) if fault is not None else {}
    return TransferComplete(
        command_key=_raw(kids, "CommandKey"),
        fault_code=_opt_int(fk, "FaultCode", w, 0),
        fault_string=_str(fk, "FaultString"),
        start_time=_str(kids, "StartTime"),
        complete_time=_str(kids, "CompleteTime"),
    )


def _dec_get_rpc_methods(el: _El) -> GetRPCMethods:
    return GetRPCMethods()


def _dec_set_parameter_values(el: _El) -> SetParameterValues:
    kids = _kids(el)
    plist = _need(kids, "ParameterList", "SetParameterValues")
    return SetParameterValues(
        _parameter_values(plist, "SetParameterValues/ParameterList"), _raw(kids, "ParameterKey")
    )


def _dec_get_parameter_values(el: _El) -> GetParameterValues:
    kids = _kids(el)
    names = _need(kids, "ParameterNames", "GetParameterValues")
    return GetParameterValues(_strings(names, "GetParameterValues/ParameterNames"))


def _dec_get_parameter_names(el: _El) -> GetParameterNames:
    kids = _kids(el)
    w = "GetParameterNames"
    next_level = _bool_of(_need(kids, "NextLevel", w), w + "/NextLevel")
    return GetParameterNames(_str(kids, "ParameterPath"), next_level)


def _dec_add_object(el: _El) -> AddObject:
    kids = _kids(el)
    return AddObject(_req_str(kids, "ObjectName", "AddObject"), _raw(kids, "ParameterKey"))


def _dec_delete_object(el: _El) -> DeleteObject:
    kids = _kids(el)
    return DeleteObject(_req_str(kids, "ObjectName", "DeleteObject"), _raw(kids, "ParameterKey"))


def _dec_reboot(el: _El) -> Reboot:
    return Reboot(_raw(_kids(el), "CommandKey"))


def _dec_factory_reset(el: _El) -> FactoryReset:
    return FactoryReset()


def _dec_download(el: _El) -> Download:
    w = "Download"
    kids = _kids(el)
    return Download(
        command_key=_raw(kids, "CommandKey"),
        file_type=_req_str(kids, "FileType", w),
        url=_req_str(kids, "URL", w),
        username=_raw(kids, "Username"),
        password=_raw(kids, "Password"),
        file_size=_opt_int(kids, "FileSize", w, 0),
        target_file_name=_str(kids, "TargetFileName"),
        delay_seconds=_opt_int(kids, "DelaySeconds", w, 0),
        success_url=_str(kids, "SuccessURL"),
        failure_url=_str(kids, "FailureURL"),
    )


def _dec_spv_response(el: _El) -> SetParameterValuesResponse:
    w = "SetParameterValuesResponse"
    return SetParameterValuesResponse(_req_int(_kids(el), "Status", w))


def _dec_gpv_response(el: _El) -> GetParameterValuesResponse:
    plist = _kids(el).get("ParameterList")
    return GetParameterValuesResponse(
        _parameter_values(plist, "GetParameterValuesResponse/ParameterList")
    )


def _dec_gpn_response(el: _El) -> GetParameterNamesResponse:
    w = "GetParameterNamesResponse/ParameterList"
    out = []
    for item in _items(_kids(el).get("ParameterList"), w):
        kids = _kids(item)
        out.append(
            ParameterInfo(_req_str(kids, "Name", w), _bool_of(_need(kids, "Writable", w), w))
        )
    return GetParameterNamesResponse(tuple(out))


def _dec_add_object_response(el: _El) -> AddObjectResponse:
    w = "AddObjectResponse"
    kids = _kids(el)
    return AddObjectResponse(_req_int(kids, "InstanceNumber", w), _req_int(kids, "Status", w))


def _dec_delete_object_response(el: _El) -> DeleteObjectResponse:
    return DeleteObjectResponse(_req_int(_kids(el), "Status", "DeleteObjectResponse"))


def _dec_reboot_response(el: _El) -> RebootResponse:
    return RebootResponse()


def _dec_factory_reset_response(el: _El) -> FactoryResetResponse:
    return FactoryResetResponse()


def _dec_download_response(el: _El) -> DownloadResponse:
    kids = _kids(el)
    return DownloadResponse(
        _req_int(kids, "Status", "DownloadResponse"),
        _str(kids, "StartTime"),
        _str(kids, "CompleteTime"),
    )


def _dec_get_rpc_methods_response(el: _El) -> GetRPCMethodsResponse:
    methods = _kids(el).get("MethodList")
    return GetRPCMethodsResponse(_strings(methods, "GetRPCMethodsResponse/MethodList"))


def _dec_inform_response(el: _El) -> InformResponse:
    return InformResponse(_opt_int(_kids(el), "MaxEnvelopes", "InformResponse", 1))


def _dec_transfer_complete_response(el: _El) -> TransferCompleteResponse:
    return TransferCompleteResponse()


_DECODERS: dict[str, Callable[[_El], Message]] = {
    "Inform": _dec_inform,
    "TransferComplete": _dec_transfer_complete,
    "GetRPCMethods": _dec_get_rpc_methods,
    "SetParameterValues": _dec_set_parameter_values,
    "GetParameterValues": _dec_get_parameter_values,
    "GetParameterNames": _dec_get_parameter_names,
    "AddObject": _dec_add_object,
    "DeleteObject": _dec_delete_object,
    "Reboot": _dec_reboot,
    "FactoryReset": _dec_factory_reset,
    "Download": _dec_download,
    "SetParameterValuesResponse": _dec_spv_response,
    "GetParameterValuesResponse": _dec_gpv_response,
    "GetParameterNamesResponse": _dec_gpn_response,
    "AddObjectResponse": _dec_add_object_response,
    "DeleteObjectResponse": _dec_delete_object_response,
    "RebootResponse": _dec_reboot_response,
    "FactoryResetResponse": _dec_factory_reset_response,
    "DownloadResponse": _dec_download_response,
    "GetRPCMethodsResponse": _dec_get_rpc_methods_response,
    "InformResponse": _dec_inform_response,
    "TransferCompleteResponse": _dec_transfer_complete_response,
}


def _dec_fault(el: _El) -> tuple[Fault, CwmpVersion | None]:
    """SOAP Fault with a cwmp:Fault in its detail (A.5)."""
    detail = _need(_kids(el), "detail", "Fault")
    cwmp_fault: _El | None = None
    for child in detail:
        tag = child.tag
        if isinstance(tag, str) and _local(tag) == "Fault":
            cwmp_fault = child
            break
    if cwmp_fault is None:
        raise CwmpDecodeError("Fault: detail has no cwmp:Fault")
    version = _VERSIONS.get(_namespace(str(cwmp_fault.tag)))
    w = "cwmp:Fault"
    kids = _kids(cwmp_fault)
    code = _req_int(kids, "FaultCode", w)
    spv_faults: list[SetParameterFault] = []
    if len(cwmp_fault) > MAX_ARRAY_ITEMS:
        raise CwmpDecodeError(f"{w}: more than {MAX_ARRAY_ITEMS} items")
    for child in cwmp_fault:
        tag = child.tag
        if isinstance(tag, str) and _local(tag) == "SetParameterValuesFault":
            sk = _kids(child)
            spv_faults.append(
                SetParameterFault(
                    _req_str(sk, "ParameterName", "SetParameterValuesFault"),
                    _req_int(sk, "FaultCode", "SetParameterValuesFault"),
                    _str(sk, "FaultString"),
                )
            )
    return Fault(code, _str(kids, "FaultString"), tuple(spv_faults)), version


def _decode_root(root: _El) -> Envelope:
    if _TOO_DEEP(root):
        raise CwmpDecodeError(f"nesting deeper than {MAX_DEPTH}")
    if not isinstance(root.tag, str) or _local(root.tag) != "Envelope":
        raise CwmpDecodeError("root is not a SOAP Envelope")
    header: _El | None = None
    body: _El | None = None
    for child in root:
        tag = child.tag
        if not isinstance(tag, str):
            continue
        local = _local(tag)
        if local == "Body" and body is None:
            body = child
        elif local == "Header" and header is None:
            header = child
    if body is None:
        raise CwmpDecodeError("Envelope has no Body")

    # §3.5 header elements; matched by local name, any prefix or namespace.
    cwmp_id: str | None = None
    hold = False
    header_version: CwmpVersion | None = None
    if header is not None:
        for child in header:
            tag = child.tag
            if not isinstance(tag, str):
                continue
            local = _local(tag)
            if local == "ID":
                cwmp_id = (child.text or "").strip()
                header_version = _VERSIONS.get(_namespace(tag))
            elif local == "HoldRequests":
                hold = _bool_of(child, "HoldRequests")

    msg_el: _El | None = None
    for child in body:
        if isinstance(child.tag, str):
            msg_el = child
            break
    if msg_el is None:
        raise CwmpDecodeError("Body has no message")
    tag = str(msg_el.tag)
    local = _local(tag)
    version = _VERSIONS.get(_namespace(tag))
    message: Message
    if version is None:
        if local != "Fault":
            raise CwmpDecodeError(f"unknown body element {tag[:80]!r}")
        message, version = _dec_fault(msg_el)
    else:
        decoder = _DECODERS.get(local)
        if decoder is None:
            raise CwmpDecodeError(f"unknown CWMP method {local[:80]!r}")
        message = decoder(msg_el)
    version = version or header_version or CwmpVersion.V1_0
    return Envelope(message, cwmp_id, version, hold)


def decode(data: bytes) -> Envelope:
    """Decode one SOAP envelope. Raises only `CwmpDecodeError`.

    An empty HTTP POST is not an envelope: the adapter recognises it before
    calling here, and `decode(b"")` raises.
    """
    if not data.strip():
        raise CwmpDecodeError("empty document")
    # Fast refusal before libxml2 sees it; the docinfo check below catches
    # DTDs hidden by other encodings (UTF-16).
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise CwmpDecodeError("DTD not allowed")
    try:
        root = etree.fromstring(data, _PARSER)
        # Any DOCTYPE (even without an internal subset) leaves an internalDTD.
        if root.getroottree().docinfo.internalDTD is not None:
            raise CwmpDecodeError("DTD not allowed")
        return _decode_root(root)
    except CwmpDecodeError:
        raise
    except etree.XMLSyntaxError as exc:
        raise CwmpDecodeError(f"malformed XML: {exc}") from None
    except (
        etree.LxmlError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        IndexError,
        RecursionError,
    ) as exc:
        raise CwmpDecodeError(f"undecodable: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- encode

_ENVELOPE_OPEN = {
    v: (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{SOAP_ENV_NS}" xmlns:SOAP-ENC="{SOAP_ENC_NS}"'
        f' xmlns:xsd="{XSD_NS}" xmlns:xsi="{XSI_NS}" xmlns:cwmp="{v.value}">'
    )
    for v in CwmpVersion
}
_ENVELOPE_CLOSE = "</SOAP-ENV:Body></SOAP-ENV:Envelope>"
_NOT_XML_BYTES = bytes(b for b in range(0x20) if b not in (0x09, 0x0A, 0x0D))
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;", '"': "&quot;"})


_NEEDS_ESCAPE = re.compile('[&<>"\r]').search


def _esc(text: str) -> str:
    # \r is escaped so it survives XML end-of-line normalisation (XML 1.0 §2.11).
    if _NEEDS_ESCAPE(text) is None:
        return text
    return text.translate(_ESCAPES)


def _leaf(out: list[str], name: str, text: str) -> None:
    out.append(f"<{name}>{_esc(text)}</{name}>")


def _bool_text(value: bool) -> str:
    return "1" if value else "0"


def _enc_parameter_values(out: list[str], params: tuple[ParameterValue, ...]) -> None:
    out.append(f'<ParameterList SOAP-ENC:arrayType="cwmp:ParameterValueStruct[{len(params)}]">')
    for p in params:
        out.append(
            f"<ParameterValueStruct><Name>{_esc(p.name)}</Name>"
            f'<Value xsi:type="{_esc(p.xsd_type)}">{_esc(p.value)}</Value></ParameterValueStruct>'
        )
    out.append("</ParameterList>")


def _enc_strings(out: list[str], name: str, items: tuple[str, ...]) -> None:
    out.append(f'<{name} SOAP-ENC:arrayType="xsd:string[{len(items)}]">')
    out.extend(f"<string>{_esc(s)}</string>" for s in items)
    out.append(f"</{name}>")


def _enc_inform(out: list[str], m: Inform) -> None:
    d = m.device_id
    out.append("<cwmp:Inform><DeviceId>")
    _leaf(out, "Manufacturer", d.manufacturer)
    _leaf(out, "OUI", d.oui)
    _leaf(out, "ProductClass", d.product_class)
    _leaf(out, "SerialNumber", d.serial_number)
    out.append(f'</DeviceId><Event SOAP-ENC:arrayType="cwmp:EventStruct[{len(m.events)}]">')
    for e in m.events:
        out.append(
            f"<EventStruct><EventCode>{_esc(e.code)}</EventCode>"
            f"<CommandKey>{_esc(e.command_key)}</CommandKey></EventStruct>"
        )
    out.append(f"</Event><MaxEnvelopes>{m.max_envelopes}</MaxEnvelopes>")
    _leaf(out, "CurrentTime", m.current_time)
    out.append(f"<RetryCount>{m.retry_count}</RetryCount>")
    _enc_parameter_values(out, m.parameters)
    out.append("</cwmp:Inform>")


def _enc_transfer_complete(out: list[str], m: TransferComplete) -> None:
    out.append("<cwmp:TransferComplete>")
    _leaf(out, "CommandKey", m.command_key)
    out.append(f"<FaultStruct><FaultCode>{m.fault_code}</FaultCode>")
    _leaf(out, "FaultString", m.fault_string)
    out.append("</FaultStruct>")
    _leaf(out, "StartTime", m.start_time)
    _leaf(out, "CompleteTime", m.complete_time)
    out.append("</cwmp:TransferComplete>")


def _enc_set_parameter_values(out: list[str], m: SetParameterValues) -> None:
    out.append("<cwmp:SetParameterValues>")
    _enc_parameter_values(out, m.parameters)
    _leaf(out, "ParameterKey", m.parameter_key)
    out.append("</cwmp:SetParameterValues>")


def _enc_get_parameter_values(out: list[str], m: GetParameterValues) -> None:
    out.append("<cwmp:GetParameterValues>")
    _enc_strings(out, "ParameterNames", m.names)
    out.append("</cwmp:GetParameterValues>")


def _enc_get_parameter_names(out: list[str], m: GetParameterNames) -> None:
    out.append("<cwmp:GetParameterNames>")
    _leaf(out, "ParameterPath", m.path)
    out.append(f"<NextLevel>{_bool_text(m.next_level)}</NextLevel></cwmp:GetParameterNames>")


def _enc_add_object(out: list[str], m: AddObject) -> None:
    out.append("<cwmp:AddObject>")
    _leaf(out, "ObjectName", m.object_name)
    _leaf(out, "ParameterKey", m.parameter_key)
    out.append("</cwmp:AddObject>")


def _enc_delete_object(out: list[str], m: DeleteObject) -> None:
    out.append("<cwmp:DeleteObject>")
    _leaf(out, "ObjectName", m.object_name)
    _leaf(out, "ParameterKey", m.parameter_key)
    out.append("</cwmp:DeleteObject>")


def _enc_reboot(out: list[str], m: Reboot) -> None:
    out.append("<cwmp:Reboot>")
    _leaf(out, "CommandKey", m.command_key)
    out.append("</cwmp:Reboot>")


def _enc_download(out: list[str], m: Download) -> None:
    # A.3.2.8: arguments in this order.
    out.append("<cwmp:Download>")
    _leaf(out, "CommandKey", m.command_key)
    _leaf(out, "FileType", m.file_type)
    _leaf(out, "URL", m.url)
    _leaf(out, "Username", m.username)
    _leaf(out, "Password", m.password)
    out.append(f"<FileSize>{m.file_size}</FileSize>")
    _leaf(out, "TargetFileName", m.target_file_name)
    out.append(f"<DelaySeconds>{m.delay_seconds}</DelaySeconds>")
    _leaf(out, "SuccessURL", m.success_url)
    _leaf(out, "FailureURL", m.failure_url)
    out.append("</cwmp:Download>")


def _enc_spv_response(out: list[str], m: SetParameterValuesResponse) -> None:
    out.append(
        f"<cwmp:SetParameterValuesResponse><Status>{m.status}</Status>"
        "</cwmp:SetParameterValuesResponse>"
    )


def _enc_gpv_response(out: list[str], m: GetParameterValuesResponse) -> None:
    out.append("<cwmp:GetParameterValuesResponse>")
    _enc_parameter_values(out, m.parameters)
    out.append("</cwmp:GetParameterValuesResponse>")


def _enc_gpn_response(out: list[str], m: GetParameterNamesResponse) -> None:
    n = len(m.parameters)
    out.append(
        "<cwmp:GetParameterNamesResponse>"
        f'<ParameterList SOAP-ENC:arrayType="cwmp:ParameterInfoStruct[{n}]">'
    )
    for p in m.parameters:
        out.append(
            f"<ParameterInfoStruct><Name>{_esc(p.name)}</Name>"
            f"<Writable>{_bool_text(p.writable)}</Writable></ParameterInfoStruct>"
        )
    out.append("</ParameterList></cwmp:GetParameterNamesResponse>")


def _enc_add_object_response(out: list[str], m: AddObjectResponse) -> None:
    out.append(
        f"<cwmp:AddObjectResponse><InstanceNumber>{m.instance_number}</InstanceNumber>"
        f"<Status>{m.status}</Status></cwmp:AddObjectResponse>"
    )


def _enc_delete_object_response(out: list[str], m: DeleteObjectResponse) -> None:
    out.append(
        f"<cwmp:DeleteObjectResponse><Status>{m.status}</Status></cwmp:DeleteObjectResponse>"
    )


def _enc_download_response(out: list[str], m: DownloadResponse) -> None:
    out.append(f"<cwmp:DownloadResponse><Status>{m.status}</Status>")
    _leaf(out, "StartTime", m.start_time)
    _leaf(out, "CompleteTime", m.complete_time)
    out.append("</cwmp:DownloadResponse>")


def _enc_get_rpc_methods_response(out: list[str], m: GetRPCMethodsResponse) -> None:
    out.append("<cwmp:GetRPCMethodsResponse>")
    _enc_strings(out, "MethodList", m.methods)
    out.append("</cwmp:GetRPCMethodsResponse>")


def _enc_inform_response(out: list[str], m: InformResponse) -> None:
    out.append(
        f"<cwmp:InformResponse><MaxEnvelopes>{m.max_envelopes}</MaxEnvelopes></cwmp:InformResponse>"
    )


def _enc_fault(out: list[str], m: Fault) -> None:
    # A.5: SOAP 1.1 Fault, faultcode "Client"/"Server", cwmp:Fault in detail.
    out.append(
        f"<SOAP-ENV:Fault><faultcode>{fault_code_kind(m.code)}</faultcode>"
        "<faultstring>CWMP fault</faultstring><detail><cwmp:Fault>"
        f"<FaultCode>{m.code}</FaultCode>"
    )
    _leaf(out, "FaultString", m.string)
    for f in m.set_parameter_faults:
        out.append(f"<SetParameterValuesFault><ParameterName>{_esc(f.name)}</ParameterName>")
        out.append(f"<FaultCode>{f.code}</FaultCode>")
        _leaf(out, "FaultString", f.string)
        out.append("</SetParameterValuesFault>")
    out.append("</cwmp:Fault></detail></SOAP-ENV:Fault>")


# Any: each encoder takes its own message type; the dict keys pair them up.
_Encoder: TypeAlias = Callable[[list[str], Any], None]


def _empty(name: str) -> _Encoder:
    text = f"<cwmp:{name}></cwmp:{name}>"

    def enc(out: list[str], m: object) -> None:
        out.append(text)

    return enc


_ENCODERS: dict[type, _Encoder] = {
    Inform: _enc_inform,
    TransferComplete: _enc_transfer_complete,
    GetRPCMethods: _empty("GetRPCMethods"),
    SetParameterValues: _enc_set_parameter_values,
    GetParameterValues: _enc_get_parameter_values,
    GetParameterNames: _enc_get_parameter_names,
    AddObject: _enc_add_object,
    DeleteObject: _enc_delete_object,
    Reboot: _enc_reboot,
    FactoryReset: _empty("FactoryReset"),
    Download: _enc_download,
    SetParameterValuesResponse: _enc_spv_response,
    GetParameterValuesResponse: _enc_gpv_response,
    GetParameterNamesResponse: _enc_gpn_response,
    AddObjectResponse: _enc_add_object_response,
    DeleteObjectResponse: _enc_delete_object_response,
    RebootResponse: _empty("RebootResponse"),
    FactoryResetResponse: _empty("FactoryResetResponse"),
    DownloadResponse: _enc_download_response,
    GetRPCMethodsResponse: _enc_get_rpc_methods_response,
    InformResponse: _enc_inform_response,
    TransferCompleteResponse: _empty("TransferCompleteResponse"),
    Fault: _enc_fault,
}


def encode(envelope: Envelope) -> bytes:
    """Encode one envelope canonically (UTF-8, fixed prefixes).

    Raises ValueError if a string holds a character XML 1.0 cannot carry:
    that is our bug or bad config, not the peer's.
    """
    out = [_ENVELOPE_OPEN[envelope.version]]
    if envelope.cwmp_id is not None or envelope.hold_requests:
        out.append("<SOAP-ENV:Header>")
        if envelope.cwmp_id is not None:
            # §3.5: the ID header carries mustUnderstand="1".
            out.append(f'<cwmp:ID SOAP-ENV:mustUnderstand="1">{_esc(envelope.cwmp_id)}</cwmp:ID>')
        if envelope.hold_requests:
            out.append('<cwmp:HoldRequests SOAP-ENV:mustUnderstand="1">1</cwmp:HoldRequests>')
        out.append("</SOAP-ENV:Header>")
    out.append("<SOAP-ENV:Body>")
    encoder = _ENCODERS.get(type(envelope.body))
    if encoder is None:
        raise TypeError(f"not a CWMP message: {type(envelope.body).__name__}")
    encoder(out, envelope.body)
    out.append(_ENVELOPE_CLOSE)
    data = "".join(out).encode()  # lone surrogates raise UnicodeEncodeError here
    # XML 1.0 §2.2: C0 controls other than TAB/LF/CR, U+FFFE and U+FFFF are not
    # characters at all. In UTF-8 a byte below 0x20 is always that character.
    if (
        len(data.translate(None, _NOT_XML_BYTES)) != len(data)
        or b"\xef\xbf\xbe" in data
        or b"\xef\xbf\xbf" in data
    ):
        raise ValueError("a string holds a character XML 1.0 cannot carry")
    return data
