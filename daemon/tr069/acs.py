"""The ACS adapter: CWMP over HTTP as a raw ASGI app (the hot path; no FastAPI).

Owns: HTTP framing, session lookup (cookie first, then the TCP connection as
fallback), CPE authentication (Basic, Digest, or a trusted closed network),
body bounds, and turning CWMP messages into service calls:
- Inform → `DeviceSeen`; the core decides what the device must do and queues it
  as device tasks in the same transaction;
- empty POST / RPC response → the next queued task becomes one RPC (vendor
  profile decides the parameter paths), answers become `ConfigApplied`,
  `ThroughputMeasured`, … events.
Rules: one guard per request (decode errors are counted and answered 400,
protocol errors get a SOAP fault, anything else is logged, counted and
answered 500); no per-request logging at INFO.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.asgi import Receive, Scope, Send, serve_lifespan
from daemon.clock import Clock
from daemon.config import AcsSettings
from daemon.core.events import (
    ConfigApplied,
    ConfigFaulted,
    DeviceSeen,
    Note,
    OrderEvent,
    TestFaulted,
    ThroughputMeasured,
)
from daemon.core.identity import InvalidSerial, parse_serial, serial_match_key
from daemon.core.throughput import compute_throughput
from daemon.httpserver import Request, Response
from daemon.metrics import Metrics
from daemon.service import Claimed, Service
from daemon.store.repository import Task
from daemon.tr069 import codec
from daemon.tr069.auth import DigestAuthenticator, parse_basic
from daemon.tr069.codec import (
    CwmpDecodeError,
    Envelope,
    Fault,
    GetRPCMethods,
    GetRPCMethodsResponse,
    Inform,
    InformResponse,
    Message,
    TransferComplete,
    TransferCompleteResponse,
)
from daemon.tr069.memo import PERIODIC, InformMemo
from daemon.tr069.profiles import Profile, ProfileSet
from daemon.tr069.session import (
    CpeRequestReceived,
    CwmpProtocolError,
    CwmpSession,
    EmptyPost,
    InformReceived,
    ResponseReceived,
    SessionState,
)

log = structlog.get_logger("turnup.acs")


COOKIE = "turnup_cwmp"
XML_HEADERS = [(b"content-type", b'text/xml; charset="utf-8"')]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
ACS_METHODS = ("Inform", "GetRPCMethods", "TransferComplete")


@dataclass(frozen=True, slots=True)
class SpeedtestUrls:
    download: str
    upload: str
    upload_bytes: int


@dataclass(slots=True)
class AcsSession:
    key: str
    cwmp: CwmpSession
    conn: tuple[str, int] | None
    serial: str = ""
    profile: Profile | None = None
    task: Task | None = None
    ended: bool = False
    set_cookie: bool = True
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class BodyTooLarge(Exception):
    pass


class _KeyPool:
    """Session keys: 18 random bytes each (144 bits), URL-safe base64, taken from a
    pool read from the OS 4 KiB at a time: one getrandom call per ~227 sessions
    instead of one per session."""

    SIZE = 18
    CHUNK = 4096 - 4096 % 18

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def token(self) -> str:
        if self._pos + self.SIZE > len(self._pool):
            self._pool, self._pos = secrets.token_bytes(self.CHUNK), 0
        raw = self._pool[self._pos : self._pos + self.SIZE]
        self._pos += self.SIZE
        return base64.urlsafe_b64encode(raw).decode("ascii")


class Acs:
    def __init__(
        self,
        service: Service,
        profiles: ProfileSet,
        settings: AcsSettings,
        speedtest: Callable[[], SpeedtestUrls],
        metrics: Metrics,
        clock: Clock,
    ) -> None:
        self.service = service
        self.profiles = profiles
        self.settings = settings
        self.speedtest = speedtest
        self.metrics = metrics
        self.clock = clock
        self.digest = DigestAuthenticator(settings.realm, secrets.token_bytes(32), nonce_ttl=300.0)
        self.sessions: dict[str, AcsSession] = {}
        self.by_conn: dict[tuple[str, int], AcsSession] = {}
        self.by_serial: dict[str, AcsSession] = {}
        self._orphans: list[str] = []  # serials whose in-flight task must be requeued
        self._challenge_second = -1  # the Digest challenge is reused within one second
        self._challenge_value = b""
        # Read at scrape time: nothing to update per session.
        metrics.cwmp_sessions_active.set_function(lambda: len(self.sessions))
        self._sessions_ok = metrics.cwmp_sessions.labels("ok")
        self._keys = _KeyPool()
        self.memo = InformMemo(settings.inform_memo_entries)
        self._sightings: dict[int, tuple[Any, Any, Any, tuple[str, Profile, DeviceSeen]]] = {}

    # ---- ASGI entry -------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ACS as an ASGI app (for `acs.http_server = "uvicorn"` and any ASGI
        server); the built-in server calls `respond` directly."""
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        raw = [(bytes(k), bytes(v)) for k, v in scope["headers"]]
        headers: dict[bytes, bytes] = {}
        for k, v in raw:
            headers.setdefault(k, v)
        client = scope.get("client")
        request = Request(
            method=scope["method"],
            target=_target(scope),
            path=scope["path"],
            headers=headers,
            raw_headers=raw,
            client=(str(client[0]), int(client[1])) if client else None,
            body=b"",
        )
        status, payload, out = 0, b"", []
        if request.path == self.settings.path and request.method == "POST":
            try:
                request.body = await _read_body(request, receive, self.settings.max_body_bytes)
            except BodyTooLarge:
                self.metrics.malformed.labels("cwmp").inc()
                status, payload = 413, b"request body too large\n"
                out = [(b"connection", b"close"), *_TEXT]
        if not status:
            status, payload, out = await self.respond(request)
        await _respond(send, status, payload, out)

    async def respond(self, request: Request) -> Response:
        """One HTTP request to the ACS endpoint; never raises."""
        if request.path != self.settings.path:
            return 404, b"not found\n", _TEXT
        if request.method != "POST":
            return 405, b"CWMP uses POST\n", [(b"allow", b"POST"), *_TEXT]
        try:
            status, payload, headers = await self.handle(request)
        except Exception:
            status, payload, headers = self._internal_error(request)
        return _typed(status, payload, headers)

    def respond_now(self, request: Request) -> Response | None:
        """The answers that need no I/O, given at once (the built-in server then
        needs no task for the request): the challenge to a new session, a routine
        Inform the device cache vouches for, and the empty POST that ends a session
        with no work queued. None: nothing was changed; use `respond`."""
        if request.path != self.settings.path or request.method != "POST":
            return None
        try:
            answer = self._respond_now(request)
        except Exception:
            answer = self._internal_error(request)
        return None if answer is None else _typed(*answer)

    def _internal_error(self, request: Request) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        log.exception("acs_internal_error", client=_client(request))
        self.metrics.internal_errors.labels("acs").inc()
        self._drop(self._find(request), "internal error", result="error")
        return 500, b"internal error\n", []

    def _respond_now(self, request: Request) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        now = self.clock.monotonic()
        session = self._find(request)
        body = request.body
        if session is None:
            if (
                not self.settings.trust_management_network
                and b"authorization" not in request.headers
            ):
                return self._challenge()
            if not body or len(self.sessions) >= self.settings.max_sessions:
                return None
            try:
                envelope = self.memo.decode(body)
            except CwmpDecodeError:
                return None
            inform = envelope.body
            if not isinstance(inform, Inform):
                return None
            auth = self._authenticate(request, inform)
            if auth is not None:
                return auth  # what `handle` answers here too
            try:
                serial, profile, seen = self._sighting(inform)
            except InvalidSerial:
                return None
            if serial in self.by_serial or not self.service.seen_routinely(seen):
                return None
            session = self._new_session(request, now)
            session.serial, session.profile = serial, profile
            self.by_serial[serial] = session
            session.cwmp.receive(envelope, now)
            answer = session.cwmp.answer(InformResponse(1))
            return 200, codec.encode(answer), self._session_headers(session)
        if (
            body
            or session.ended
            or not session.serial
            or session.cwmp.state is not SessionState.CPE_REQUESTS
            or session.cwmp.is_expired(now)
            or not self.service.has_no_work(session.serial)
        ):
            return None
        session.cwmp.receive(None, now)
        session.cwmp.end()
        self._finish(session, "ok")
        return 204, b"", self._session_headers(session)

    # ---- one request ------------------------------------------------------

    async def handle(self, request: Request) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        now = self.clock.monotonic()
        body = request.body
        session = self._find(request)
        if (
            not self.settings.trust_management_network
            and b"authorization" not in request.headers
            and session is None
        ):
            # A new session without credentials (what CPEs send first): challenge
            # before spending a parse on a body we would not act on anyway.
            return self._challenge()
        envelope: Envelope | None = None
        if body.strip():
            try:
                envelope = self.memo.decode(body)
            except CwmpDecodeError as exc:
                self.metrics.malformed.labels("cwmp").inc()
                # Requeue its task now, not at the next sweep: the CPE retries at
                # once and its next session must get the same RPC again.
                if session is not None:
                    await self._abandon(session, "malformed request", result="malformed")
                return 400, f"malformed CWMP request: {exc}\n".encode(), []

        if envelope is not None and isinstance(envelope.body, Inform):
            if session is not None and session.cwmp.state is not SessionState.AWAIT_INFORM:
                if session.cwmp.state is SessionState.ENDED or session.ended:
                    self._forget(session)
                    session = None
            if session is None:
                auth = self._authenticate(request, envelope.body)
                if auth is not None:
                    return auth
                if len(self.sessions) >= self.settings.max_sessions:
                    self.metrics.cwmp_sessions.labels("refused_busy").inc()
                    return 503, b"too many sessions\n", [(b"retry-after", b"10")]
                session = self._new_session(request, now)
        elif session is None:
            # Not an Inform and no session: the CPE lost its session (or never had one).
            self.metrics.cwmp_faults.labels("to_cpe", "8005").inc()
            return self._fault_reply(None, codec.fault_for(8005, "no session; start with Inform"))

        try:
            received = session.cwmp.receive(envelope, now)
        except CwmpProtocolError as exc:
            self.metrics.cwmp_faults.labels("to_cpe", str(exc.fault_code)).inc()
            await self._abandon(session, f"protocol error: {exc}")
            return self._fault_reply(session, codec.fault_for(exc.fault_code, str(exc)))

        match received:
            case InformReceived(inform=inform):
                return await self._on_inform(session, inform)
            case CpeRequestReceived(message=message):
                return await self._on_cpe_request(session, message)
            case EmptyPost():
                return await self._next_rpc(session)
            case ResponseReceived(response=response):
                claimed = await self._on_response(session, response)
                return await self._next_rpc(session, claimed, first=False)
        raise AssertionError(f"unhandled {received!r}")

    # ---- Inform -----------------------------------------------------------

    async def _on_inform(
        self, session: AcsSession, inform: Inform
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        try:
            serial, profile, seen = self._sighting(inform)
        except InvalidSerial as exc:
            self.metrics.malformed.labels("cwmp").inc()
            await self._abandon(session, "bad serial")
            return self._fault_reply(session, codec.fault_for(8003, str(exc)))
        session.serial = serial
        session.profile = profile
        previous = self.by_serial.get(serial)
        if previous is not None and previous is not session:
            # Two sessions from one device at once: the newest wins (the CPE
            # gave up on the old one); work sent in the old one goes back to the queue.
            await self._abandon(
                previous, "superseded by a new session from the same device", result="superseded"
            )
        self.by_serial[serial] = session
        await self.service.device_seen(seen)
        envelope = session.cwmp.answer(InformResponse(1))
        return 200, codec.encode(envelope), self._session_headers(session)

    def _sighting(self, inform: Inform) -> tuple[str, Profile, DeviceSeen]:
        """(serial, vendor profile, the sighting) an Inform stands for; raises
        InvalidSerial for a serial number turnup cannot read.

        An Inform answered from the memo shares its DeviceId, events and parameters
        objects with the first decode; so does its sighting (kept here, checked by
        identity, which holding the objects makes safe)."""
        key = id(inform.parameters)
        known = self._sightings.get(key)
        if (
            known is not None
            and known[0] is inform.parameters
            and known[1] is inform.device_id
            and known[2] is inform.events
        ):
            return known[3]
        result = self._sighting_of(inform)
        bound = self.settings.inform_memo_entries
        if bound and all(e.code == PERIODIC for e in inform.events):
            # the Informs the memo keeps: they come again
            if len(self._sightings) >= bound:
                self._sightings.clear()
            self._sightings[key] = (inform.parameters, inform.device_id, inform.events, result)
        return result

    def _sighting_of(self, inform: Inform) -> tuple[str, Profile, DeviceSeen]:
        device_id = inform.device_id
        serial = parse_serial(device_id.serial_number)
        params = {p.name: p.value for p in inform.parameters}
        root = next(iter(params), "Device.")
        profile = self.profiles.select(
            serial.vendor_id, device_id.oui, device_id.product_class, root
        )
        prefix = profile.root
        seen = DeviceSeen(
            serial=serial.text,
            source="tr069",
            vendor_id=serial.vendor_id,
            manufacturer=device_id.manufacturer,
            oui=device_id.oui,
            product_class=device_id.product_class,
            model=params.get(prefix + "DeviceInfo.ModelName") or device_id.product_class,
            firmware=params.get(prefix + "DeviceInfo.SoftwareVersion", ""),
            location=profile.location_from(params),
            connection_request_url=params.get(prefix + "ManagementServer.ConnectionRequestURL"),
            data_model=profile.data_model,
            profile=profile.name,
            diagnostics_complete=any(
                e.code.strip().upper() == "8 DIAGNOSTICS COMPLETE" for e in inform.events
            ),
            bootstrap=any(e.code.strip().upper() == "0 BOOTSTRAP" for e in inform.events),
        )
        return serial.text, profile, seen

    def _authenticate(
        self, request: Request, inform: Inform
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
        """None when the CPE may go on; else the 401 answer."""
        s = self.settings
        if s.trust_management_network:
            return None
        header = request.header(b"authorization")
        scheme = header.split(" ", 1)[0].lower() if header else ""
        username: str | None = None
        if scheme == "basic" and s.auth in ("basic", "any"):
            pair = parse_basic(header)
            if pair is not None:
                expected = self._password_for(pair[0])
                if expected is not None and hmac.compare_digest(
                    pair[1].encode(), expected.encode()
                ):
                    username = pair[0]
        elif scheme == "digest" and s.auth in ("digest", "any"):
            result = self.digest.verify(
                header, "POST", self._password_for, self.clock.monotonic(), uri=request.target
            )
            if result.ok:
                username = result.username
            elif result.stale:
                return self._challenge(stale=True)
        # The label comes from a closed set: the scheme name is the peer's to choose
        # and must not grow the metric without bound.
        label = scheme if scheme in ("basic", "digest") else "other"
        if username is None:
            if header:
                self.metrics.cwmp_auth_failures.labels(label).inc()
            return self._challenge()
        if username in s.credentials:
            # A per-device credential only speaks for that device.
            try:
                same = serial_match_key(username) == serial_match_key(
                    inform.device_id.serial_number
                )
            except InvalidSerial:
                same = False
            if not same:
                self.metrics.cwmp_auth_failures.labels(label).inc()
                return 403, b"credentials belong to another device\n", []
        return None

    def _password_for(self, username: str) -> str | None:
        s = self.settings
        if username in s.credentials:
            return s.credentials[username]
        if s.shared_username and hmac.compare_digest(username.encode(), s.shared_username.encode()):
            return s.shared_password
        return None

    def _challenge(self, stale: bool = False) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        headers: list[tuple[bytes, bytes]] = []
        if self.settings.auth in ("digest", "any"):
            now = self.clock.monotonic()
            # One nonce per second is plenty (RFC 7616 leaves nonce reuse to the
            # server; ours carry their issue time and expire after nonce_ttl).
            if stale or int(now) != self._challenge_second:
                value = self.digest.challenge(now, stale=stale).encode()
                if stale:
                    headers.append((b"www-authenticate", value))
                else:
                    self._challenge_second, self._challenge_value = int(now), value
            if not stale:
                headers.append((b"www-authenticate", self._challenge_value))
        if self.settings.auth in ("basic", "any"):
            headers.append((b"www-authenticate", f'Basic realm="{self.settings.realm}"'.encode()))
        return 401, b"authentication required\n", headers

    # ---- CPE requests -----------------------------------------------------

    async def _on_cpe_request(
        self, session: AcsSession, message: Message
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        if isinstance(message, TransferComplete):
            await self._note_transfer(session, message)
            reply: Message = TransferCompleteResponse()
        elif isinstance(message, GetRPCMethods):
            reply = GetRPCMethodsResponse(ACS_METHODS)
        else:  # the session table lets only these through
            reply = codec.fault_for(8000)
        return 200, codec.encode(session.cwmp.answer(reply)), self._session_headers(session)

    async def _note_transfer(self, session: AcsSession, message: TransferComplete) -> None:
        await self.service.record(
            Note(
                "device.transfer_complete",
                None,
                session.serial,
                {
                    "command_key": message.command_key,
                    "fault_code": message.fault_code,
                    "fault_string": message.fault_string,
                    "start": message.start_time,
                    "complete": message.complete_time,
                },
                self.clock.now(),
            )
        )
        if message.fault_code:
            self.metrics.cwmp_faults.labels("from_cpe", str(message.fault_code)).inc()

    # ---- ACS RPCs ---------------------------------------------------------

    async def _next_rpc(
        self, session: AcsSession, claimed: Claimed | None = None, first: bool = True
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Send the device's next task as one RPC, or end the session (204).

        `claimed` is a task already taken by the transaction that closed the
        previous one; on an empty POST the queue is asked here."""
        if first and claimed is None:
            claimed = await self.service.claim_work(session.serial)
        while claimed is not None:
            task = claimed.task
            try:
                request = self._rpc_for(session, claimed)
            except Exception as exc:  # a task we cannot turn into an RPC: record, skip
                reason = f"cannot build RPC: {exc}"
                log.warning("task_unusable", serial=session.serial, task=task.id, error=str(exc))
                claimed = await self.service.finish_work(
                    task, "faulted", fault=reason, event=_failure_event(task, reason)
                )
                continue
            if request is None:  # nothing to send for this task (an empty configuration)
                event = ConfigApplied(task.order_id) if task.order_id else None
                claimed = await self.service.finish_work(
                    task, "done", result={"skipped": "nothing to set"}, event=event
                )
                continue
            session.task = task
            envelope = session.cwmp.send_rpc(request, str(task.id))
            self.metrics.cwmp_rpcs.labels(type(request).__name__).inc()
            return 200, codec.encode(envelope), self._session_headers(session)
        session.cwmp.end()
        self._finish(session, "ok")
        return 204, b"", self._session_headers(session)

    def _rpc_for(self, session: AcsSession, claimed: Claimed) -> Message | None:
        profile = session.profile
        assert profile is not None
        task = claimed.task
        kind = task.kind
        if kind == "configure":
            params = profile.render_configuration(self._config_context(claimed))
            if not params:
                return None
            return codec.SetParameterValues(params, f"turnup-{task.order_id}"[:32])
        if kind in ("download_diagnostics", "upload_diagnostics"):
            direction = kind.split("_", 1)[0]
            urls = self.speedtest()
            url = urls.download if direction == "download" else urls.upload
            return codec.SetParameterValues(
                profile.diagnostics_request(direction, url, urls.upload_bytes), ""
            )
        if kind in ("read_download", "read_upload"):
            direction = kind.split("_", 1)[1]
            return codec.GetParameterValues(profile.diagnostics_result_names(direction))
        if kind == "rpc":
            return rpc_from_payload(task.payload)
        raise ValueError(f"unknown task kind {kind!r}")

    def _config_context(self, claimed: Claimed) -> dict[str, Any]:
        order, device = claimed.order, claimed.device
        if order is None:
            raise ValueError("configure task without its order")
        plan = self.service.plan(order.plan_id)
        s = self.settings
        return {
            "plan": plan.as_dict(),
            "order": {
                "id": order.id,
                "account_id": order.account_id,
                "network_type": order.network_type.value,
                "location": order.location.as_dict(),
            },
            "settings": order.settings,
            "acs": {
                "periodic_inform_interval": s.periodic_inform_interval,
                "connection_request_username": s.connection_request_username,
                "connection_request_password": s.connection_request_password,
            },
            "device": device.describe() if device else {"serial": claimed.task.serial},
        }

    async def _on_response(self, session: AcsSession, response: Message) -> Claimed | None:
        """Close the task this response answers (one transaction with what it
        means for the order) and return the next task already claimed."""
        task, session.task = session.task, None
        if task is None:
            return await self.service.claim_work(session.serial)
        if isinstance(response, Fault):
            self.metrics.cwmp_faults.labels("from_cpe", str(response.code)).inc()
            detail = f"CWMP fault {response.code} {response.string}".strip()
            if response.set_parameter_faults:
                detail += ": " + ", ".join(
                    f"{f.name} ({f.code} {f.string})".strip() for f in response.set_parameter_faults
                )
            return await self.service.finish_work(
                task, "faulted", fault=detail, event=_failure_event(task, detail)
            )
        result: dict[str, Any] = {"response": type(response).__name__}
        if isinstance(response, codec.GetParameterValuesResponse):
            result["parameters"] = {p.name: p.value for p in response.parameters}
        elif isinstance(response, codec.GetParameterNamesResponse):
            result["parameters"] = {p.name: p.writable for p in response.parameters}
        elif isinstance(response, codec.AddObjectResponse):
            result["instance_number"] = response.instance_number
        status = getattr(response, "status", None)
        if status is not None:
            result["status"] = status
        return await self.service.finish_work(
            task, "done", result=result, event=self._success_event(session, task, response)
        )

    def _success_event(
        self, session: AcsSession, task: Task, response: Message
    ) -> OrderEvent | None:
        if not task.order_id:
            return None
        if task.kind == "configure":
            return ConfigApplied(task.order_id)
        if task.kind in ("read_download", "read_upload"):
            direction = task.kind.split("_", 1)[1]
            assert session.profile is not None
            params = (
                response.parameters
                if isinstance(response, codec.GetParameterValuesResponse)
                else ()
            )
            values = session.profile.diagnostics_values(direction, params)
            return ThroughputMeasured(task.order_id, compute_throughput(direction, values))
        return None  # the diagnostics request was accepted: the CPE reports back later

    # ---- sessions ---------------------------------------------------------

    def _new_session(self, request: Request, now: float) -> AcsSession:
        key = self._keys.token()
        conn = request.client
        session = AcsSession(
            key, CwmpSession(key, now, self.settings.session_timeout_seconds), conn
        )
        self.sessions[key] = session
        if conn is not None:
            old = self.by_conn.get(conn)
            if old is not None and old is not session:
                self.sessions.pop(old.key, None)
            self.by_conn[conn] = session
        return session

    def _find(self, request: Request) -> AcsSession | None:
        cookie = request.headers.get(b"cookie")
        if cookie:
            key = _cookie_value(cookie.decode("latin-1"), COOKIE)
            if key is not None:
                found = self.sessions.get(key)
                if found is not None:
                    return found
        conn = request.client
        return self.by_conn.get(conn) if conn is not None else None

    def _session_headers(self, session: AcsSession) -> list[tuple[bytes, bytes]]:
        if session.set_cookie:
            session.set_cookie = False
            return [(b"set-cookie", f"{COOKIE}={session.key}; Path=/; HttpOnly".encode())]
        return []

    def _finish(self, session: AcsSession, result: str) -> None:
        session.ended = True
        if result == "ok":
            self._sessions_ok.inc()
        else:
            self.metrics.cwmp_sessions.labels(result).inc()
        self._forget(session)

    def _forget(self, session: AcsSession) -> None:
        self.sessions.pop(session.key, None)
        if session.conn is not None and self.by_conn.get(session.conn) is session:
            del self.by_conn[session.conn]
        if session.serial and self.by_serial.get(session.serial) is session:
            del self.by_serial[session.serial]

    def _drop(self, session: AcsSession | None, why: str, result: str = "dropped") -> None:
        """Forget a session synchronously; its sent task is requeued by `sweep`."""
        if session is None or session.ended:
            return
        session.ended = True
        self.metrics.cwmp_sessions.labels(result).inc()
        self._forget(session)
        if session.task is not None:
            self._orphans.append(session.serial)

    async def _abandon(self, session: AcsSession, why: str, result: str = "aborted") -> None:
        """End a session that did not finish: forget it and put back the task it
        had in flight so the next session sends it again. `result` labels how it
        ended in `turnup_cwmp_sessions_total` (each session is counted once)."""
        if session.ended:
            return
        session.ended = True
        self.metrics.cwmp_sessions.labels(result).inc()
        self._forget(session)
        if session.task is not None and session.serial:
            session.task = None
            await self.service.requeue_sent(session.serial)
        log.info("cwmp_session_aborted", serial=session.serial or None, reason=why)

    def _fault_reply(
        self, session: AcsSession | None, fault: Fault
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        version = session.cwmp.version if session else codec.CwmpVersion.V1_0
        # SOAP 1.1 §6.2: a response carrying a SOAP Fault uses HTTP 500.
        return 500, codec.encode(Envelope(fault, None, version)), []

    async def sweep(self) -> int:
        """Expire idle sessions (a CPE that dropped mid-session) and requeue
        the work they had in flight. Returns how many were expired."""
        now = self.clock.monotonic()
        expired = [s for s in self.sessions.values() if s.cwmp.is_expired(now)]
        for session in expired:
            await self._abandon(session, "idle timeout", result="timeout")
        orphans, self._orphans = self._orphans, []
        for serial in orphans:
            await self.service.requeue_sent(serial)
        return len(expired)

    async def run_sweeper(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except Exception:
                log.exception("acs_sweep_error")
                self.metrics.internal_errors.labels("acs").inc()


# ---- RPCs from the API's task payloads -----------------------------------


def _failure_event(task: Task, reason: str) -> OrderEvent | None:
    if not task.order_id or task.kind == "rpc":
        return None
    if task.kind == "configure":
        return ConfigFaulted(task.order_id, reason)
    return TestFaulted(task.order_id, reason)


def rpc_from_payload(payload: dict[str, Any]) -> Message:
    method = payload.get("method")
    args = payload.get("args") or {}
    if method == "Reboot":
        return codec.Reboot(str(args.get("command_key", "turnup")))
    if method == "FactoryReset":
        return codec.FactoryReset()
    if method == "GetParameterValues":
        return codec.GetParameterValues(tuple(str(n) for n in args["names"]))
    if method == "GetParameterNames":
        return codec.GetParameterNames(str(args["path"]), bool(args.get("next_level", False)))
    if method == "SetParameterValues":
        params = tuple(
            codec.ParameterValue(
                str(p["name"]), str(p["value"]), str(p.get("type") or "xsd:string")
            )
            for p in args["parameters"]
        )
        return codec.SetParameterValues(params, str(args.get("parameter_key", "")))
    if method == "AddObject":
        return codec.AddObject(str(args["object_name"]), str(args.get("parameter_key", "")))
    if method == "DeleteObject":
        return codec.DeleteObject(str(args["object_name"]), str(args.get("parameter_key", "")))
    if method == "Download":
        return codec.Download(
            command_key=str(args.get("command_key", "turnup")),
            file_type=str(args["file_type"]),
            url=str(args["url"]),
            username=str(args.get("username", "")),
            password=str(args.get("password", "")),
            file_size=int(args.get("file_size", 0)),
            target_file_name=str(args.get("target_file_name", "")),
            delay_seconds=int(args.get("delay_seconds", 0)),
        )
    raise ValueError(f"unsupported method {method!r}")


# ---- ASGI helpers -----------------------------------------------------------


def _cookie_value(header: str, name: str) -> str | None:
    """One cookie's value from a Cookie header (RFC 6265 §5.4: `a=1; b=2`).
    http.cookies.SimpleCookie costs ~20x more and rejects what sloppy CPEs send."""
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None


def _client(request: Request) -> str:
    c = request.client
    return f"{c[0]}:{c[1]}" if c else "?"


def _target(scope: Scope) -> str:
    path: str = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
    query = scope.get("query_string", b"")
    if query and "?" not in path:
        path += "?" + query.decode("latin-1")
    return path


async def _read_body(request: Request, receive: Receive, limit: int) -> bytes:
    declared = request.header(b"content-length")
    if declared:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            raise BodyTooLarge from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _typed(
    status: int, payload: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Add the Content-Type of a response with a body."""
    if payload and status != 204:
        return status, payload, [*headers, *(XML_HEADERS if payload[:5] == b"<?xml" else _TEXT)]
    return status, payload, headers


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    out = list(headers)
    if status != 204:
        out.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body if status != 204 else b""})
