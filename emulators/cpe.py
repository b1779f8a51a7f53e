"""One emulated CPE/ONT: a TR-069 (CWMP) client with a parameter tree and TR-143 tests.

Owns: `DeviceSpec`, `EmulatedCpe` (CWMP sessions against an ACS, RPC execution against
the tree, post-session work: diagnostics, downloads, reboot, factory reset), and the
pending-event model that turns connection requests and follow-ups into sessions.
Rules: an independent implementation. It never imports daemon/tr069; it writes SOAP
with string templates and escaping, and reads the ACS's XML with a hardened lxml parser
(no entities, no DTD, no network). It is strict in what it sends (TR-069 Annex A) and
records, rather than raises, whatever goes wrong: one bad session never ends the device.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from xml.sax.saxutils import escape

from lxml import etree

from emulators.http_client import (
    ClientAuth,
    ConnectError,
    HttpConnection,
    HttpError,
    Response,
    TransferResult,
    download,
    parse_url,
    upload,
)
from emulators.personalities import (
    UNKNOWN_TIME,
    XSD_BOOLEAN,
    XSD_DATETIME,
    XSD_INT,
    XSD_UINT,
    Location,
    Param,
    Personality,
    build_tree,
    get_personality,
    inform_parameter_names,
    is_secret,
)
from emulators.wire import HandedOver, WireError, WireTarget
from emulators.wire import periodic_session as wire_periodic_session

__all__ = [
    "CWMP_NAMESPACES",
    "DeviceSpec",
    "DiagnosticsRecord",
    "EmulatedCpe",
    "Location",
    "SessionRecord",
    "format_time",
]

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENC = "http://schemas.xmlsoap.org/soap/encoding/"
CWMP_NAMESPACES = {f"1.{i}": f"urn:dslforum-org:cwmp-1-{i}" for i in range(5)}

AuthScheme = Literal["basic", "digest", "none"]
DiagQuirk = Literal["zero_interval", "missing_bom"]
EventList = list[tuple[str, str]]
OnEvent = Callable[[str, "EmulatedCpe", Mapping[str, object]], None]

MAX_RPCS_PER_SESSION = 500  # bound: an ACS that never says 204 cannot keep us forever
MAX_REDIRECTS = 5
MAX_DOWNLOAD_DELAY = 30.0  # bound on Download/ScheduleInform DelaySeconds we honour

# TR-069 A.5.1 fault codes the CPE sends
FAULT_STRINGS = {
    9000: "Method not supported",
    9001: "Request denied",
    9002: "Internal error",
    9003: "Invalid arguments",
    9004: "Resources exceeded",
    9005: "Invalid parameter name",
    9006: "Invalid parameter type",
    9007: "Invalid parameter value",
    9008: "Attempt to set a non-writable parameter",
    9010: "Download failure",
}
_CLIENT_FAULTS = {9003, 9005, 9006, 9007, 9008}

RPC_METHODS = (
    "GetRPCMethods",
    "SetParameterValues",
    "GetParameterValues",
    "GetParameterNames",
    "SetParameterAttributes",
    "GetParameterAttributes",
    "AddObject",
    "DeleteObject",
    "Reboot",
    "Download",
    "FactoryReset",
    "ScheduleInform",
)


def format_time(epoch: float) -> str:
    """TR-069 dateTime in UTC with microseconds: 2026-11-25T19:00:00.123456Z."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    serial: str
    personality: str = "nokia"
    down_mbps: float = 100.0
    up_mbps: float = 50.0
    location: Location | None = None
    first_event: str = "0 BOOTSTRAP"  # "2 PERIODIC" emulates a sloppy first contact
    username: str | None = None  # None: the serial number
    password: str = ""
    auth: AuthScheme = "digest"  # the scheme this CPE answers 401 challenges with
    diag_quirk: DiagQuirk | None = None
    cwmp_version: str = "1.0"
    hide_secrets: bool = True  # GetParameterValues returns "" for passwords, as specified


class CwmpFault(Exception):
    """A fault the CPE answers an ACS request with (TR-069 A.5.1)."""

    def __init__(
        self, code: int, string: str | None = None, spv: list[tuple[str, int]] | None = None
    ) -> None:
        super().__init__(code, string or FAULT_STRINGS.get(code, "Fault"))
        self.code = code
        self.string = string or FAULT_STRINGS.get(code, "Fault")
        self.spv = spv or []


class _SessionEnd(Exception):
    """The session ended abnormally; `retryable` says a real CPE would try again."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(slots=True)
class SessionRecord:
    events: list[str]
    ok: bool = False
    error: str | None = None
    retryable: bool = False
    rpcs: list[str] = field(default_factory=list)
    acs_fault: tuple[int, str] | None = None
    http_status: int | None = None
    started: float = 0.0
    ended: float = 0.0


@dataclass(slots=True)
class DiagnosticsRecord:
    kind: str  # "Download" or "Upload"
    state: str
    url: str
    test_bytes: int
    rom_time: str
    bom_time: str
    eom_time: str
    error: str = ""


@dataclass(slots=True)
class _PostAction:
    kind: str  # "diagnostics" | "download" | "reboot" | "factory_reset" | "schedule_inform"
    args: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------- XML helpers

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _local(el: etree._Element) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def _children(el: etree._Element, name: str | None = None) -> list[etree._Element]:
    return [c for c in el if isinstance(c.tag, str) and (name is None or _local(c) == name)]


def _child(el: etree._Element, name: str) -> etree._Element | None:
    for c in el:
        if isinstance(c.tag, str) and _local(c) == name:
            return c
    return None


def _text(el: etree._Element | None, name: str | None = None, default: str = "") -> str:
    if el is None:
        return default
    if name is not None:
        el = _child(el, name)
        if el is None:
            return default
    return (el.text or "").strip() if name is not None else (el.text or "")


@dataclass(slots=True)
class _Envelope:
    cwmp_id: str | None
    method: str
    body: etree._Element
    fault: tuple[int, str] | None = None


def _parse_envelope(data: bytes) -> _Envelope:
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise _SessionEnd(f"ACS sent malformed XML: {exc}") from None
    if getattr(root.getroottree().docinfo, "doctype", ""):
        raise _SessionEnd("ACS sent a DOCTYPE; refused")
    if _local(root) != "Envelope":
        raise _SessionEnd(f"ACS sent <{_local(root)}>, not a SOAP Envelope")
    cwmp_id = None
    header = _child(root, "Header")
    if header is not None:
        id_el = _child(header, "ID")
        if id_el is not None:
            cwmp_id = (id_el.text or "").strip()
    body = _child(root, "Body")
    if body is None:
        raise _SessionEnd("SOAP Envelope without Body")
    kids = _children(body)
    if not kids:
        raise _SessionEnd("SOAP Body is empty")
    rpc = kids[0]
    method = _local(rpc)
    fault = None
    if method == "Fault":
        code, string = 0, _text(rpc, "faultstring")
        detail = _child(rpc, "detail")
        cf = _child(detail, "Fault") if detail is not None else None
        if cf is not None:
            with contextlib.suppress(ValueError):
                code = int(_text(cf, "FaultCode", "0"))
            string = _text(cf, "FaultString") or string
        fault = (code, string)
    return _Envelope(cwmp_id, method, rpc, fault)


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true")


def _check_value(param: Param, value: str) -> str:
    """Validate and normalise a value for a leaf's type; raise CwmpFault 9007."""
    if param.xsd == XSD_BOOLEAN:
        v = value.strip().lower()
        if v not in ("0", "1", "true", "false"):
            raise CwmpFault(9007)
        return "true" if v in ("1", "true") else "false"
    if param.xsd == XSD_UINT:
        v = value.strip()
        if not v.isdigit() or int(v) > 0xFFFFFFFF:
            raise CwmpFault(9007)
        return str(int(v))
    if param.xsd == XSD_INT:
        v = value.strip()
        try:
            n = int(v)
        except ValueError:
            raise CwmpFault(9007) from None
        if not -(2**31) <= n < 2**31:
            raise CwmpFault(9007)
        return str(n)
    if param.xsd == XSD_DATETIME:
        return value.strip()
    return value


def _default_for(xsd: str) -> str:
    return {XSD_BOOLEAN: "false", XSD_UINT: "0", XSD_INT: "0", XSD_DATETIME: UNKNOWN_TIME}.get(
        xsd, ""
    )


# --------------------------------------------------------------------------- the CPE


class EmulatedCpe:
    """One emulated device. Sessions never overlap (a per-device lock)."""

    def __init__(
        self,
        spec: DeviceSpec,
        acs_url: str,
        *,
        cr_url: str = "",
        session_limiter: asyncio.Semaphore | None = None,
        on_event: OnEvent | None = None,
        periodic_interval: float | None = None,
        max_retries: int = 5,
        retry_base: float = 1.0,
        retry_cap: float = 30.0,
        http_timeout: float = 30.0,
        transfer_time_limit: float = 120.0,
        reboot_delay: float = 0.0,
        remember_auth: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.personality: Personality = get_personality(spec.personality)
        self.serial = spec.serial
        self.acs_url = acs_url
        self.cr_url = cr_url
        self.limiter = session_limiter
        self.on_event = on_event
        self.periodic_interval = periodic_interval
        self.max_retries = max_retries
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.http_timeout = http_timeout
        self.transfer_time_limit = transfer_time_limit
        self.reboot_delay = reboot_delay
        # Like many CPE stacks: keep the scheme (and a Digest nonce) from the last
        # session and send credentials with the first request of the next one.
        self.remember_auth = remember_auth
        self._auth: ClientAuth | None = None
        self.wall = wall
        self.tree: dict[str, Param] = {}
        self.attributes: dict[str, int] = {}  # parameter -> Notification (0/1/2)
        self._extra_objects: set[str] = set()  # objects added without leaves
        self.reset_tree()
        self.bootstrapped = spec.first_event != "0 BOOTSTRAP"
        # pending work
        self._pending: EventList = []
        self._wake = asyncio.Event()
        self._post_actions: list[_PostAction] = []
        self._transfer_complete: dict[str, str] | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._inform_key: object = None
        self._wire_target: tuple[str, WireTarget] | None = None
        self._inform_parts: tuple[bytes, bytes, bytes] = (b"", b"", b"")
        # records
        self.sessions_ok = 0
        self.sessions_failed = 0
        self.sessions: deque[SessionRecord] = deque(maxlen=32)
        self.acs_faults: deque[tuple[int, str]] = deque(maxlen=32)
        self.faults_sent = 0
        self.rpc_counts: Counter[str] = Counter()
        self.diagnostics: deque[DiagnosticsRecord] = deque(maxlen=32)
        self.connection_requests = 0
        self.last_error: str | None = None
        self.booted = False  # the first session has finished (ok or not)
        self.lean_handed_over = 0  # lean periodic sessions the ACS gave work to
        self.in_session = False

    # ---------------------------------------------------------------- tree helpers

    @property
    def root(self) -> str:
        return self.personality.root

    def _ms(self, leaf: str) -> str:
        return f"{self.root}ManagementServer.{leaf}"

    def reset_tree(self) -> None:
        """Factory state (also the state at first power-on)."""
        self.tree = build_tree(
            self.personality,
            self.spec.serial,
            self.acs_url,
            self.cr_url,
            self.spec.location,
            username=self.spec.username,
            password=self.spec.password,
        )
        if self.periodic_interval is not None:
            self.tree[self._ms("PeriodicInformEnable")].value = "true"
            self.tree[self._ms("PeriodicInformInterval")].value = str(
                max(1, round(self.periodic_interval))
            )
        self.attributes = {}
        self._extra_objects = set()

    def set_connection_request_url(self, url: str) -> None:
        self.cr_url = url
        self.tree[self._ms("ConnectionRequestURL")].value = url

    def get(self, path: str) -> str:
        return self.tree[path].value

    def _objects(self) -> set[str]:
        objs: set[str] = set(self._extra_objects)
        for name in self.tree:
            i = name.rfind(".")
            while i > 0:
                prefix = name[: i + 1]
                if prefix in objs:
                    break
                objs.add(prefix)
                i = name.rfind(".", 0, i)
        return objs

    def _expand(self, name: str) -> list[str]:
        """Leaves named by a full or partial (trailing ".") path; CwmpFault 9005 if none."""
        if name == "":
            return list(self.tree)
        if name.endswith("."):
            leaves = [n for n in self.tree if n.startswith(name)]
            if not leaves and name not in self._extra_objects:
                raise CwmpFault(9005, f"Invalid parameter name {name}")
            return leaves
        if name in self.tree:
            return [name]
        raise CwmpFault(9005, f"Invalid parameter name {name}")

    def _emit(self, event: str, /, **data: object) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event, self, data)
            except Exception:  # a broken observer must not break the device
                pass

    # ---------------------------------------------------------------- pending work

    def boot_events(self) -> EventList:
        if self.spec.first_event == "0 BOOTSTRAP":
            return [("0 BOOTSTRAP", ""), ("1 BOOT", "")]
        return [(self.spec.first_event, "")]

    def add_events(self, events: Iterable[tuple[str, str]]) -> None:
        for ev in events:
            if ev not in self._pending:
                self._pending.append(ev)
        self._wake.set()

    def connection_request(self) -> None:
        """Schedule a "6 CONNECTION REQUEST" session; coalesced with one already queued.

        A request arriving while a session runs queues one session to follow it, so work
        the ACS queued after that session's end is not lost.
        """
        self.connection_requests += 1
        self._emit("connection_request")
        self.add_events([("6 CONNECTION REQUEST", "")])

    def periodic_inform(self) -> None:
        self.add_events([("2 PERIODIC", "")])

    def kick(self) -> None:
        """Wake the device loop (e.g. post-session work left by a storm session)."""
        self._wake.set()

    @property
    def has_work(self) -> bool:
        return bool(self._pending or self._post_actions)

    def _take_pending(self) -> EventList:
        evs, self._pending = self._pending, []
        self._wake.clear()
        return evs

    def _periodic_seconds(self) -> float | None:
        if self.periodic_interval is not None:
            return self.periodic_interval
        if not _bool(self.tree[self._ms("PeriodicInformEnable")].value):
            return None
        try:
            return max(1.0, float(self.tree[self._ms("PeriodicInformInterval")].value))
        except ValueError:
            return None

    async def run_forever(self, *, start_delay: float = 0.0) -> None:
        """Power on, boot, then serve triggers until cancelled (one fleet task each)."""
        if start_delay > 0:
            await asyncio.sleep(start_delay)
        self.add_events(self.boot_events())
        while True:
            await self.process_pending()
            period = self._periodic_seconds()
            if self.has_work:
                continue
            try:
                if period is None:
                    await self._wake.wait()
                else:
                    async with asyncio.timeout(period):
                        await self._wake.wait()
            except TimeoutError:
                self.periodic_inform()

    async def process_pending(self) -> None:
        """Do post-session work, then run one session for whatever events are pending."""
        await self.run_post_actions()
        if self._pending:
            await self.run_session_with_retry(self._take_pending())
            await self.run_post_actions()

    async def run_until_idle(
        self, events: Iterable[tuple[str, str]], max_sessions: int = 20
    ) -> int:
        """Run a session for `events` and every follow-up session; return sessions run."""
        self.add_events(events)
        n = 0
        while self.has_work and n < max_sessions:
            await self.run_post_actions()
            if self._pending:
                await self.run_session_with_retry(self._take_pending())
                n += 1
        await self.run_post_actions()
        return n

    async def run_session_with_retry(self, events: EventList) -> SessionRecord:
        """A session, retried with exponential backoff on transport failures (TR-069 3.2.1.1)."""
        attempt = 0
        while True:
            rec = await self.run_session(events, retry_count=attempt)
            if rec.ok or not rec.retryable or attempt >= self.max_retries:
                return rec
            delay = min(self.retry_cap, self.retry_base * (2**attempt))
            attempt += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    # --------------------------------------------------------------------- session

    async def run_session(
        self, events: Iterable[tuple[str, str]], *, retry_count: int = 0
    ) -> SessionRecord:
        """Run one CWMP session; never raises (apart from cancellation)."""
        evs = list(events)
        if not self.bootstrapped and ("0 BOOTSTRAP", "") not in evs:
            evs.insert(0, ("0 BOOTSTRAP", ""))  # until one bootstrap succeeded (3.7.1.5)
        if self._transfer_complete is not None and not any(
            c == "7 TRANSFER COMPLETE" for c, _ in evs
        ):
            evs.append(("7 TRANSFER COMPLETE", ""))
            evs.append(("M Download", self._transfer_complete["CommandKey"]))
        rec = SessionRecord(events=[c for c, _ in evs])
        await self._hold_session(rec, lambda: self._session(evs, retry_count, rec))
        return self._record(rec, bootstrap=any(c == "0 BOOTSTRAP" for c, _ in evs))

    async def run_periodic_lean(self) -> SessionRecord:
        """A routine "2 PERIODIC" session on the lean wire path (`emulators/wire.py`).

        Same bytes on the wire as `run_session` for a routine session, without the
        generic HTTP client and XML parser. A device with pending work, one that has
        not bootstrapped yet or whose ACS URL is not plain `http://` runs the full
        session instead; so does one the ACS hands work to in the middle of the lean
        session (counted in `lean_handed_over`)."""
        periodic: EventList = [("2 PERIODIC", "")]
        if self.has_work or self._transfer_complete is not None or not self.bootstrapped:
            return await self.run_session(periodic)
        url = self.tree[self._ms("URL")].value or self.acs_url
        if self._wire_target is None or self._wire_target[0] != url:
            try:
                u = parse_url(url)
            except HttpError:
                u = None
            if u is None or u.scheme != "http":
                return await self.run_session(periodic)  # it reports the URL's trouble
            self._wire_target = (url, WireTarget(u.host, u.port, u.target, u.authority))
        target = self._wire_target[1]
        rec = SessionRecord(events=["2 PERIODIC"])
        handed_over = False

        async def run() -> None:
            nonlocal handed_over
            cwmp_id = f"{self.serial}-{next(self._ids)}"
            try:
                await wire_periodic_session(
                    target,
                    inform=self._inform_with_id(cwmp_id, periodic, 0),
                    cwmp_id=cwmp_id,
                    auth=self._session_auth(),
                    user_agent=self._user_agent(),
                    timeout=self.http_timeout,
                )
            except HandedOver:
                handed_over = True
            except WireError as exc:
                raise _SessionEnd(exc.reason, retryable=exc.retryable) from None

        await self._hold_session(rec, run)
        if handed_over:
            self.lean_handed_over += 1
            return await self.run_session(periodic)
        return self._record(rec, bootstrap=False)

    async def _hold_session(self, rec: SessionRecord, run: Callable[[], Awaitable[None]]) -> None:
        """Run one session's exchange: the device's lock (sessions never overlap) and a
        fleet slot held, timed into `rec`, its failure turned into `rec.error`."""
        async with self._lock:
            limiter = self.limiter if self.limiter is not None else contextlib.nullcontext()
            async with limiter:
                rec.started = time.monotonic()
                self.in_session = True
                try:
                    await run()
                    rec.ok = True
                except _SessionEnd as exc:
                    rec.error, rec.retryable = exc.reason, exc.retryable
                except Exception as exc:  # one bad session never ends the device
                    rec.error = f"internal: {exc!r}"
                finally:
                    self.in_session = False
                    rec.ended = time.monotonic()

    def _record(self, rec: SessionRecord, *, bootstrap: bool) -> SessionRecord:
        self.sessions.append(rec)
        self.booted = True
        if rec.ok:
            self.sessions_ok += 1
            if bootstrap:
                self.bootstrapped = True
            self._emit("session_ok", events=rec.events, rpcs=rec.rpcs)
        else:
            self.sessions_failed += 1
            self.last_error = rec.error
            self._emit("session_failed", events=rec.events, error=rec.error)
        return rec

    def _session_auth(self) -> ClientAuth:
        auth = ClientAuth(
            self.tree[self._ms("Username")].value,
            self.tree[self._ms("Password")].value,
            self.spec.auth,
        )
        kept = self._auth
        if (
            self.remember_auth
            and kept is not None
            and (kept.username, kept.password, kept.scheme)
            == (auth.username, auth.password, auth.scheme)
        ):
            auth = kept
        self._auth = auth
        return auth

    def _user_agent(self) -> str:
        p = self.personality
        return f"{p.manufacturer} {p.model_name} {p.software_version} (turnup emulator)"

    async def _session(self, evs: EventList, retry_count: int, rec: SessionRecord) -> None:
        url = self.tree[self._ms("URL")].value or self.acs_url
        try:
            parse_url(url)
        except HttpError as exc:
            raise _SessionEnd(f"bad ACS URL: {exc}") from None
        sess = _HttpSession(
            url, self._session_auth(), timeout=self.http_timeout, user_agent=self._user_agent()
        )
        try:
            # 1. Inform -> InformResponse (redirects allowed on this first message only)
            inform = self._inform(evs, retry_count)
            for _ in range(MAX_REDIRECTS + 1):
                resp = await sess.post(inform)
                rec.http_status = resp.status
                if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("location"):
                    await sess.redirect(resp.headers["location"])
                    continue
                break
            env = self._expect(resp, "InformResponse", rec)
            max_env = _text(env.body, "MaxEnvelopes", "1")
            if max_env and max_env.isdigit() and int(max_env) < 1:
                raise _SessionEnd(f"InformResponse MaxEnvelopes={max_env}")
            # 2. CPE-originated requests (TransferComplete)
            if self._transfer_complete is not None:
                resp = await sess.post(self._transfer_complete_xml())
                self._expect(resp, "TransferCompleteResponse", rec)
                self._transfer_complete = None
            # 3. empty POST, then the ACS drives until 204
            body = b""
            for _ in range(MAX_RPCS_PER_SESSION):
                resp = await sess.post(body)
                rec.http_status = resp.status
                if resp.status == 204 or (resp.status == 200 and not resp.body.strip()):
                    return
                if resp.status != 200:
                    raise _SessionEnd(
                        f"HTTP {resp.status} during session", retryable=resp.status >= 500
                    )
                env = _parse_envelope(resp.body)
                if env.fault is not None:
                    self._record_acs_fault(env.fault, rec)
                    raise _SessionEnd(f"ACS sent SOAP Fault {env.fault[0]} {env.fault[1]}")
                rec.rpcs.append(env.method)
                self.rpc_counts[env.method] += 1
                body = self._execute(env)
            raise _SessionEnd(f"more than {MAX_RPCS_PER_SESSION} RPCs in one session")
        except ConnectError as exc:
            raise _SessionEnd(str(exc), retryable=True) from None
        except HttpError as exc:
            raise _SessionEnd(f"HTTP: {exc}", retryable=True) from None
        finally:
            await sess.aclose()

    def _expect(self, resp: Response, method: str, rec: SessionRecord) -> _Envelope:
        if resp.status == 401:
            raise _SessionEnd(f"authentication failed ({resp.status}) waiting for {method}")
        if resp.status != 200:
            raise _SessionEnd(
                f"HTTP {resp.status} waiting for {method}", retryable=resp.status >= 500
            )
        if not resp.body.strip():
            raise _SessionEnd(f"empty body waiting for {method}")
        env = _parse_envelope(resp.body)
        if env.fault is not None:
            self._record_acs_fault(env.fault, rec)
            raise _SessionEnd(f"ACS sent SOAP Fault {env.fault[0]} {env.fault[1]} for {method}")
        if env.method != method:
            raise _SessionEnd(f"expected {method}, ACS sent {env.method}")
        return env

    def _record_acs_fault(self, fault: tuple[int, str], rec: SessionRecord) -> None:
        rec.acs_fault = fault
        self.acs_faults.append(fault)
        self._emit("acs_fault", code=fault[0], string=fault[1])

    # ------------------------------------------------------------------ XML out

    def _envelope(self, cwmp_id: str | None, inner: str) -> bytes:
        ns = CWMP_NAMESPACES.get(self.spec.cwmp_version, CWMP_NAMESPACES["1.0"])
        header = (
            f'<soap-env:Header><cwmp:ID soap-env:mustUnderstand="1">{escape(cwmp_id)}'
            "</cwmp:ID></soap-env:Header>"
            if cwmp_id is not None
            else ""
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<soap-env:Envelope xmlns:soap-env="{SOAP_ENV}" xmlns:soap-enc="{SOAP_ENC}" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            f'xmlns:cwmp="{ns}">{header}<soap-env:Body>{inner}</soap-env:Body>'
            "</soap-env:Envelope>"
        ).encode()

    def _pvs(self, names: list[str], *, hide: bool = False) -> str:
        parts = [f'<ParameterList soap-enc:arrayType="cwmp:ParameterValueStruct[{len(names)}]">']
        for n in names:
            p = self.tree[n]
            value = "" if hide and is_secret(n) else p.value
            parts.append(
                f"<ParameterValueStruct><Name>{escape(n)}</Name>"
                f'<Value xsi:type="{p.xsd}">{escape(value)}</Value></ParameterValueStruct>'
            )
        parts.append("</ParameterList>")
        return "".join(parts)

    def _inform(self, evs: EventList, retry_count: int) -> bytes:
        return self._inform_with_id(f"{self.serial}-{next(self._ids)}", evs, retry_count)

    def _inform_with_id(self, cwmp_id: str, evs: EventList, retry_count: int) -> bytes:
        p = self.personality
        names = [
            n for n in inform_parameter_names(p, self.spec.location is not None) if n in self.tree
        ]
        ident = tuple(
            self.get(f"{self.root}DeviceInfo.{leaf}")
            for leaf in ("Manufacturer", "ManufacturerOUI", "ProductClass", "SerialNumber")
        )
        # The envelope around cwmp:ID and CurrentTime is rebuilt only when what it
        # carries changed (the lean storm path sends thousands of periodic Informs).
        key = (
            tuple(evs),
            retry_count,
            ident,
            tuple((n, self.tree[n].value, self.tree[n].xsd) for n in names),
        )
        if key != self._inform_key:
            events = "".join(
                f"<EventStruct><EventCode>{escape(c)}</EventCode>"
                f"<CommandKey>{escape(k)}</CommandKey></EventStruct>"
                for c, k in evs
            )
            inner = (
                "<cwmp:Inform><DeviceId>"
                f"<Manufacturer>{escape(ident[0])}</Manufacturer><OUI>{escape(ident[1])}</OUI>"
                f"<ProductClass>{escape(ident[2])}</ProductClass>"
                f"<SerialNumber>{escape(ident[3])}</SerialNumber>"
                f'</DeviceId><Event soap-enc:arrayType="cwmp:EventStruct[{len(evs)}]">{events}'
                "</Event><MaxEnvelopes>1</MaxEnvelopes><CurrentTime>\x00</CurrentTime>"
                f"<RetryCount>{retry_count}</RetryCount>{self._pvs(names)}</cwmp:Inform>"
            )
            head, rest = self._envelope("\x00", inner).split(b"\x00", 1)
            middle, tail = rest.split(b"\x00", 1)
            self._inform_key, self._inform_parts = key, (head, middle, tail)
        head, middle, tail = self._inform_parts
        return b"".join(
            (head, escape(cwmp_id).encode(), middle, format_time(self.wall()).encode(), tail)
        )

    def _transfer_complete_xml(self) -> bytes:
        tc = self._transfer_complete or {}
        inner = (
            f"<cwmp:TransferComplete><CommandKey>{escape(tc.get('CommandKey', ''))}</CommandKey>"
            f"<FaultStruct><FaultCode>{tc.get('FaultCode', '0')}</FaultCode>"
            f"<FaultString>{escape(tc.get('FaultString', ''))}</FaultString></FaultStruct>"
            f"<StartTime>{tc.get('StartTime', UNKNOWN_TIME)}</StartTime>"
            f"<CompleteTime>{tc.get('CompleteTime', UNKNOWN_TIME)}</CompleteTime>"
            "</cwmp:TransferComplete>"
        )
        return self._envelope(f"{self.serial}-{next(self._ids)}", inner)

    def _fault_xml(self, cwmp_id: str | None, fault: CwmpFault) -> bytes:
        spv = "".join(
            f"<SetParameterValuesFault><ParameterName>{escape(n)}</ParameterName>"
            f"<FaultCode>{c}</FaultCode><FaultString>{escape(FAULT_STRINGS.get(c, ''))}"
            "</FaultString></SetParameterValuesFault>"
            for n, c in fault.spv
        )
        who = "Client" if fault.code in _CLIENT_FAULTS else "Server"
        inner = (
            f"<soap-env:Fault><faultcode>{who}</faultcode><faultstring>CWMP fault</faultstring>"
            f"<detail><cwmp:Fault><FaultCode>{fault.code}</FaultCode>"
            f"<FaultString>{escape(fault.string)}</FaultString>{spv}</cwmp:Fault></detail>"
            "</soap-env:Fault>"
        )
        return self._envelope(cwmp_id, inner)

    # ------------------------------------------------------------------ RPCs

    def _execute(self, env: _Envelope) -> bytes:
        handler = getattr(self, f"_rpc_{env.method}", None)
        if env.method not in RPC_METHODS or handler is None:
            self.faults_sent += 1
            return self._fault_xml(
                env.cwmp_id, CwmpFault(9000, f"Method not supported: {env.method}")
            )
        try:
            inner: str = handler(env.body)
        except CwmpFault as fault:
            self.faults_sent += 1
            self._emit("cpe_fault", method=env.method, code=fault.code, spv=fault.spv)
            return self._fault_xml(env.cwmp_id, fault)
        return self._envelope(env.cwmp_id, inner)

    def _rpc_GetRPCMethods(self, _rpc: etree._Element) -> str:
        items = "".join(f"<string>{m}</string>" for m in RPC_METHODS)
        return (
            f'<cwmp:GetRPCMethodsResponse><MethodList soap-enc:arrayType="xsd:string'
            f'[{len(RPC_METHODS)}]">{items}</MethodList></cwmp:GetRPCMethodsResponse>'
        )

    def _set_parameter_key(self, rpc: etree._Element) -> None:
        self.tree[self._ms("ParameterKey")].value = _text(rpc, "ParameterKey")

    def _rpc_SetParameterValues(self, rpc: etree._Element) -> str:
        plist = _child(rpc, "ParameterList")
        if plist is None:
            raise CwmpFault(9003, "SetParameterValues without ParameterList")
        changes: list[tuple[str, str]] = []
        faults: list[tuple[str, int]] = []
        seen: set[str] = set()
        for pvs in _children(plist, "ParameterValueStruct"):
            name = _text(pvs, "Name")
            value_el = _child(pvs, "Value")
            value = (value_el.text or "") if value_el is not None else ""
            param = self.tree.get(name)
            if name in seen:
                raise CwmpFault(9003, f"{name} appears twice")  # A.3.2.1
            seen.add(name)
            if param is None:
                faults.append((name, 9005))
                continue
            if not param.writable:
                faults.append((name, 9008))
                continue
            try:
                value = _check_value(param, value)
                if name.endswith("Diagnostics.DiagnosticsState") and value not in (
                    "Requested",
                    "Canceled",
                ):
                    raise CwmpFault(9007)
            except CwmpFault as f:
                faults.append((name, f.code))
                continue
            changes.append((name, value))
        if faults:
            raise CwmpFault(9003, spv=faults)  # all or nothing (A.3.2.1)
        diag_kinds: list[str] = []
        for name, value in changes:
            self.tree[name].value = value
            if name.endswith("Diagnostics.DiagnosticsState") and value == "Requested":
                diag_kinds.append("Upload" if "UploadDiagnostics" in name else "Download")
        for kind in diag_kinds:
            if not any(
                a.kind == "diagnostics" and a.args["kind"] == kind for a in self._post_actions
            ):
                self._post_actions.append(_PostAction("diagnostics", {"kind": kind}))
        self._set_parameter_key(rpc)
        return (
            "<cwmp:SetParameterValuesResponse><Status>0</Status></cwmp:SetParameterValuesResponse>"
        )

    def _names(self, rpc: etree._Element) -> list[str]:
        names_el = _child(rpc, "ParameterNames")
        if names_el is None:
            raise CwmpFault(9003, "missing ParameterNames")
        return [(s.text or "").strip() for s in _children(names_el, "string")]

    def _rpc_GetParameterValues(self, rpc: etree._Element) -> str:
        out: list[str] = []
        for name in self._names(rpc):
            out.extend(self._expand(name))
        return (
            f"<cwmp:GetParameterValuesResponse>{self._pvs(out, hide=self.spec.hide_secrets)}"
            "</cwmp:GetParameterValuesResponse>"
        )

    def _rpc_GetParameterNames(self, rpc: etree._Element) -> str:
        path = _text(rpc, "ParameterPath")
        next_level = _bool(_text(rpc, "NextLevel", "false"))
        objects = self._objects()
        infos: list[tuple[str, bool]] = []
        if path == "":
            if next_level:
                infos.append((self.root, False))
            else:
                infos = self._subtree("", objects)
        elif path.endswith("."):
            if path not in objects:
                raise CwmpFault(9005, f"Invalid parameter name {path}")
            if next_level:
                infos = [
                    (n, w)
                    for n, w in self._subtree(path, objects)
                    if n != path and "." not in n[len(path) :].rstrip(".")
                ]
            else:
                infos = self._subtree(path, objects)
        else:
            if path not in self.tree:
                raise CwmpFault(9005, f"Invalid parameter name {path}")
            if next_level:
                raise CwmpFault(9003, "NextLevel true on a parameter")
            infos = [(path, self.tree[path].writable)]
        items = "".join(
            f"<ParameterInfoStruct><Name>{escape(n)}</Name><Writable>{int(w)}</Writable>"
            "</ParameterInfoStruct>"
            for n, w in infos
        )
        return (
            "<cwmp:GetParameterNamesResponse>"
            f'<ParameterList soap-enc:arrayType="cwmp:ParameterInfoStruct[{len(infos)}]">'
            f"{items}</ParameterList></cwmp:GetParameterNamesResponse>"
        )

    def _subtree(self, path: str, objects: set[str]) -> list[tuple[str, bool]]:
        tables = self._tables(objects)
        out: list[tuple[str, bool]] = [
            (o, o in tables) for o in sorted(objects) if o.startswith(path)
        ]
        out.extend((n, p.writable) for n, p in self.tree.items() if n.startswith(path))
        out.sort(key=lambda item: item[0])
        return out

    @staticmethod
    def _tables(objects: set[str]) -> set[str]:
        tables = set()
        for o in objects:
            head, _, last = o[:-1].rpartition(".")
            if last.isdigit() and head:
                tables.add(head + ".")
        return tables

    def _rpc_SetParameterAttributes(self, rpc: etree._Element) -> str:
        plist = _child(rpc, "ParameterList")
        if plist is None:
            raise CwmpFault(9003, "missing ParameterList")
        updates: list[tuple[list[str], int]] = []
        for s in _children(plist, "SetParameterAttributesStruct"):
            name = _text(s, "Name")
            leaves = self._expand(name)
            if _bool(_text(s, "NotificationChange", "false")):
                try:
                    notif = int(_text(s, "Notification", "0"))
                except ValueError:
                    raise CwmpFault(9003, "bad Notification") from None
                if notif not in (0, 1, 2):
                    raise CwmpFault(9003, "bad Notification")
                updates.append((leaves, notif))
        for leaves, notif in updates:
            for leaf in leaves:
                self.attributes[leaf] = notif
        return "<cwmp:SetParameterAttributesResponse/>"

    def _rpc_GetParameterAttributes(self, rpc: etree._Element) -> str:
        out: list[str] = []
        for name in self._names(rpc):
            out.extend(self._expand(name))
        items = "".join(
            f"<ParameterAttributeStruct><Name>{escape(n)}</Name>"
            f"<Notification>{self.attributes.get(n, 0)}</Notification>"
            '<AccessList soap-enc:arrayType="xsd:string[0]"></AccessList>'
            "</ParameterAttributeStruct>"
            for n in out
        )
        return (
            "<cwmp:GetParameterAttributesResponse>"
            f'<ParameterList soap-enc:arrayType="cwmp:ParameterAttributeStruct[{len(out)}]">'
            f"{items}</ParameterList></cwmp:GetParameterAttributesResponse>"
        )

    def _rpc_AddObject(self, rpc: etree._Element) -> str:
        obj = _text(rpc, "ObjectName")
        if not obj.endswith("."):
            raise CwmpFault(9005, f"Invalid object name {obj}")
        instances: set[int] = set()
        for n in itertools.chain(self.tree, self._extra_objects):
            if n.startswith(obj):
                head = n[len(obj) :].split(".", 1)[0]
                if head.isdigit():
                    instances.add(int(head))
        if not instances:
            raise CwmpFault(9005, f"{obj} is not a multi-instance object")
        new = max(instances) + 1
        template = f"{obj}{min(instances)}."
        added = False
        for n, p in list(self.tree.items()):
            if n.startswith(template):
                name = f"{obj}{new}.{n[len(template) :]}"
                self.tree[name] = Param(_default_for(p.xsd), p.xsd, p.writable)
                added = True
        if not added:
            self._extra_objects.add(f"{obj}{new}.")
        self._set_parameter_key(rpc)
        return (
            f"<cwmp:AddObjectResponse><InstanceNumber>{new}</InstanceNumber>"
            "<Status>0</Status></cwmp:AddObjectResponse>"
        )

    def _rpc_DeleteObject(self, rpc: etree._Element) -> str:
        obj = _text(rpc, "ObjectName")
        head, _, last = obj[:-1].rpartition(".")
        if not obj.endswith(".") or not last.isdigit() or not head:
            raise CwmpFault(9005, f"{obj} is not an object instance")
        doomed = [n for n in self.tree if n.startswith(obj)]
        extra = [o for o in self._extra_objects if o.startswith(obj)]
        if not doomed and not extra:
            raise CwmpFault(9005, f"no such object {obj}")
        for n in doomed:
            del self.tree[n]
            self.attributes.pop(n, None)
        self._extra_objects.difference_update(extra)
        self._set_parameter_key(rpc)
        return "<cwmp:DeleteObjectResponse><Status>0</Status></cwmp:DeleteObjectResponse>"

    def _rpc_Reboot(self, rpc: etree._Element) -> str:
        self._post_actions.append(_PostAction("reboot", {"CommandKey": _text(rpc, "CommandKey")}))
        return "<cwmp:RebootResponse/>"

    def _rpc_FactoryReset(self, _rpc: etree._Element) -> str:
        self._post_actions.append(_PostAction("factory_reset"))
        return "<cwmp:FactoryResetResponse/>"

    def _rpc_ScheduleInform(self, rpc: etree._Element) -> str:
        delay = _text(rpc, "DelaySeconds", "0")
        if not delay.isdigit() or int(delay) < 1:
            raise CwmpFault(9003, "DelaySeconds must be a positive integer")
        self._post_actions.append(
            _PostAction(
                "schedule_inform", {"DelaySeconds": delay, "CommandKey": _text(rpc, "CommandKey")}
            )
        )
        return "<cwmp:ScheduleInformResponse/>"

    def _rpc_Download(self, rpc: etree._Element) -> str:
        args = {
            k: _text(rpc, k)
            for k in (
                "CommandKey",
                "FileType",
                "URL",
                "Username",
                "Password",
                "FileSize",
                "TargetFileName",
                "DelaySeconds",
                "SuccessURL",
                "FailureURL",
            )
        }
        if not args["URL"]:
            raise CwmpFault(9003, "Download without URL")
        if self._transfer_complete is not None or any(
            a.kind == "download" for a in self._post_actions
        ):
            raise CwmpFault(9004, "a download is already pending")
        self._post_actions.append(_PostAction("download", args))
        # Status 1: the transfer happens after the session; TransferComplete follows.
        return (
            "<cwmp:DownloadResponse><Status>1</Status>"
            f"<StartTime>{UNKNOWN_TIME}</StartTime><CompleteTime>{UNKNOWN_TIME}</CompleteTime>"
            "</cwmp:DownloadResponse>"
        )

    # ------------------------------------------------------------- after a session

    async def run_post_actions(self) -> None:
        """Run what the last sessions asked for, queueing the follow-up events."""
        if not self._post_actions:
            return
        actions, self._post_actions = self._post_actions, []
        order = {
            "diagnostics": 0,
            "schedule_inform": 1,
            "download": 2,
            "reboot": 3,
            "factory_reset": 4,
        }
        actions.sort(key=lambda a: order.get(a.kind, 9))
        diag_done = False
        for action in actions:
            try:
                diag_done = await self._run_action(action) or diag_done
            except Exception as exc:  # a bug in one action must not end the device
                self.last_error = f"{action.kind} failed: {exc!r}"
        if diag_done:
            self.add_events([("8 DIAGNOSTICS COMPLETE", "")])

    async def _run_action(self, action: _PostAction) -> bool:
        """Run one post-session action; True if it was a diagnostics test."""
        if action.kind == "diagnostics":
            await self._run_diagnostics(action.args["kind"])
            return True
        if action.kind == "schedule_inform":
            await asyncio.sleep(min(MAX_DOWNLOAD_DELAY, float(action.args["DelaySeconds"])))
            self.add_events([("3 SCHEDULED", ""), ("M ScheduleInform", action.args["CommandKey"])])
        elif action.kind == "download":
            await self._run_download(action.args)
        elif action.kind == "reboot":
            await self._reboot([("1 BOOT", ""), ("M Reboot", action.args["CommandKey"])])
        elif action.kind == "factory_reset":
            self.reset_tree()
            self.bootstrapped = False
            self._transfer_complete = None
            await self._reboot([("0 BOOTSTRAP", ""), ("1 BOOT", "")])
        return False

    async def _reboot(self, events: EventList) -> None:
        if self.reboot_delay > 0:
            await asyncio.sleep(self.reboot_delay)
        # Events not delivered before a reboot are discarded (TR-069 Table 7), except the
        # ones that must survive: a pending TransferComplete re-adds its own events.
        self._pending = []
        self.add_events(events)

    async def _run_download(self, args: dict[str, str]) -> None:
        with contextlib.suppress(ValueError):
            await asyncio.sleep(min(MAX_DOWNLOAD_DELAY, float(args.get("DelaySeconds") or 0)))
        start = self.wall()
        url = args["URL"]
        fault_code, fault_string = 0, ""
        if url.startswith(("http://", "https://")):
            res = await download(
                url, rate_mbps=self.spec.down_mbps or None, time_limit=self.transfer_time_limit
            )
            if not res.ok:
                fault_code, fault_string = 9010, f"Download failure: {res.error or res.state}"
        self._transfer_complete = {
            "CommandKey": args["CommandKey"],
            "FaultCode": str(fault_code),
            "FaultString": fault_string,
            "StartTime": format_time(start),
            "CompleteTime": format_time(self.wall()),
        }
        self._emit("download_done", url=url, fault_code=fault_code)
        events: EventList = [("7 TRANSFER COMPLETE", ""), ("M Download", args["CommandKey"])]
        if fault_code == 0 and args.get("FileType", "").startswith("1 "):
            events.insert(0, ("1 BOOT", ""))  # a firmware image boots the new software
        self.add_events(events)

    async def _run_diagnostics(self, kind: str) -> None:
        prefix = self.personality.diag_prefix(kind)
        t = self.tree
        if t[f"{prefix}DiagnosticsState"].value != "Requested":
            return  # canceled in a later session
        if kind == "Download":
            url = t[f"{prefix}DownloadURL"].value
            res: TransferResult = await download(
                url,
                rate_mbps=self.spec.down_mbps,
                time_limit=self.transfer_time_limit,
                wall=self.wall,
            )
        else:
            url = t[f"{prefix}UploadURL"].value
            try:
                length = int(t[f"{prefix}TestFileLength"].value)
            except ValueError:
                length = 0
            res = await upload(
                url,
                length,
                rate_mbps=self.spec.up_mbps,
                time_limit=self.transfer_time_limit,
                wall=self.wall,
            )
        rom = format_time(res.rom_time) if res.rom_time else UNKNOWN_TIME
        bom = format_time(res.bom_time) if res.bom_time else UNKNOWN_TIME
        eom = format_time(res.eom_time) if res.eom_time else UNKNOWN_TIME
        if self.spec.diag_quirk == "zero_interval":
            bom = eom
        elif self.spec.diag_quirk == "missing_bom":
            bom = UNKNOWN_TIME
        state = self.personality.diag_complete_state if res.ok else res.state
        t[f"{prefix}DiagnosticsState"].value = state
        t[f"{prefix}ROMTime"].value = rom
        t[f"{prefix}BOMTime"].value = bom
        t[f"{prefix}EOMTime"].value = eom
        if kind == "Download":
            t[f"{prefix}TestBytesReceived"].value = str(res.test_bytes)
            t[f"{prefix}TotalBytesReceived"].value = str(res.total_bytes)
        else:
            t[f"{prefix}TotalBytesSent"].value = str(res.total_bytes)
        record = DiagnosticsRecord(kind, state, url, res.test_bytes, rom, bom, eom, res.error)
        self.diagnostics.append(record)
        self._emit("diagnostics", kind=kind, state=state, test_bytes=res.test_bytes)

    def snapshot(self) -> dict[str, object]:
        """Everything recorded on this CPE, for reports and debugging."""
        return {
            "serial": self.serial,
            "personality": self.personality.name,
            "sessions_ok": self.sessions_ok,
            "sessions_failed": self.sessions_failed,
            "faults_sent": self.faults_sent,
            "acs_faults": list(self.acs_faults),
            "rpc_counts": dict(self.rpc_counts),
            "diagnostics": list(self.diagnostics),
            "connection_requests": self.connection_requests,
            "last_error": self.last_error,
        }


# ------------------------------------------------------------------- HTTP session


class _HttpSession:
    """The HTTP side of one CWMP session: one connection, a cookie jar, 401 answers."""

    def __init__(self, url: str, auth: ClientAuth, *, timeout: float, user_agent: str) -> None:
        self.auth = auth
        self.timeout = timeout
        self.user_agent = user_agent
        self.cookies: dict[str, str] = {}
        self._set_url(url)

    def _set_url(self, url: str) -> None:
        u = parse_url(url)
        self.url = u
        self.conn = HttpConnection(u.host, u.port, scheme=u.scheme, timeout=self.timeout)

    async def redirect(self, location: str) -> None:
        await self.conn.aclose()
        if location.startswith("/"):
            location = f"{self.url.scheme}://{self.url.authority}{location}"
        try:
            self._set_url(location)
        except HttpError as exc:
            raise _SessionEnd(f"bad redirect {location!r}: {exc}") from None

    async def post(self, body: bytes) -> Response:
        # One answer to a 401 per request, two if we had sent stale pre-emptive credentials.
        tries = 2 if self.auth.active else 1
        while True:
            headers = [("User-Agent", self.user_agent)]
            if body:
                headers += [("Content-Type", 'text/xml; charset="utf-8"'), ("SOAPAction", "")]
            if self.cookies:
                headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
            authz = self.auth.authorization("POST", self.url.target)
            if authz:
                headers.append(("Authorization", authz))
            resp = await self.conn.request("POST", self.url.target, headers, body)
            self._take_cookies(resp)
            if resp.status != 401 or tries == 0:
                return resp
            tries -= 1
            if not self.auth.on_challenge(resp.headers):
                raise _SessionEnd(f"HTTP 401: {self.auth.last_error}")

    def _take_cookies(self, resp: Response) -> None:
        for raw in resp.headers.get_all("set-cookie"):
            pair = raw.split(";", 1)[0]
            name, sep, value = pair.partition("=")
            if sep and name.strip():
                self.cookies[name.strip()] = value.strip()

    async def aclose(self) -> None:
        await self.conn.aclose()
