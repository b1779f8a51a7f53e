"""HTTP Basic and Digest authentication for the ACS (server side), sans-IO.

Owns parsing of `Authorization` headers, building `WWW-Authenticate`
challenges and checking Digest responses (TR-069 §3.4.4 requires Basic or
Digest; Digest per RFC 7616, with RFC 2069 responses from old CPEs).

Rules:
- No I/O, no clock, no logging: time is an argument, passwords come from a
  lookup callable.
- Nonces are stateless: a timestamp and a salt signed with HMAC-SHA256 under
  the server secret, so no per-nonce table is kept. Pass the same kind of
  time to `challenge` and `verify` (wall-clock seconds let nonces survive a
  restart). The nonce count is not tracked: `nonce_ttl` bounds replays.
- Digests compare with `hmac.compare_digest`. A malformed header yields a
  failed result; nothing here raises on peer input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEADER_LENGTH = 4096

_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda b: hashlib.md5(b).hexdigest(),
    "SHA-256": lambda b: hashlib.sha256(b).hexdigest(),
}


def parse_basic(header: str) -> tuple[str, str] | None:
    """(username, password) from a Basic `Authorization` value, else None.

    An empty password is accepted (some CPEs ship with one); the scheme name
    is matched case-insensitively (RFC 7617 §2).
    """
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    token = "".join(token.split())
    try:
        raw = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # RFC 7617 §2.1: legacy clients
    user, sep, password = text.partition(":")
    if not sep:
        return None
    return user, password


# RFC 7235 §2.1 auth-param: token BWS "=" BWS ( token / quoted-string )
_PARAM = re.compile(
    r"""\s*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|\Z)""",
    re.DOTALL,
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BARE_VALUE = re.compile(r'[^\s,"]*')
# Tokens already (RFC 7616 §3.4 parameter names): no regex needed for these.
_DIGEST_KEYS = frozenset(
    "username realm nonce uri algorithm response qop nc cnonce opaque userhash".split()
)


def parse_digest(header: str) -> dict[str, str] | None:
    """Parameters of a Digest `Authorization` value (keys lower-cased), else None."""
    if len(header) > MAX_HEADER_LENGTH:
        return None
    header = header.strip()
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "digest":
        return None
    rest = rest.strip()
    if "\\" not in rest:
        fast = _split_params(rest)
        if fast is not None:
            return fast
    return _scan_params(rest)


def _split_params(rest: str) -> dict[str, str] | None:
    """The common shape (`k="v", k=v`, no comma or escape inside a value) by
    splitting; None when the value is not of that shape, and `_scan_params`,
    the full grammar, decides. Where both give a result it is the same (tested)."""
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or (key not in _DIGEST_KEYS and _TOKEN.fullmatch(key) is None):
            return None
        value = value.strip()
        if value[:1] == '"':
            if len(value) < 2 or value[-1] != '"' or '"' in value[1:-1]:
                return None
            value = value[1:-1]
        elif _BARE_VALUE.fullmatch(value) is None:
            return None
        key = key.lower()
        if key in params:
            return None
        params[key] = value
    return params


def _scan_params(rest: str) -> dict[str, str] | None:
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        key = m.group(1).lower()
        if key in params:
            return None  # RFC 7616 §3.4: each parameter at most once
        quoted = m.group(2)
        if quoted is None:
            params[key] = m.group(3) or ""
        else:
            params[key] = _UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted
        pos = m.end()
    return params


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str = "",
    cnonce: str = "",
    qop: str = "",
    ha1: str | None = None,
) -> str:
    """The `response` value of RFC 7616 §3.4.1 (or RFC 2069 when qop is empty).

    `algorithm` is "MD5", "SHA-256" or either with "-sess". Raises KeyError
    for an unknown algorithm. `ha1`: H(username:realm:password) if the caller
    has it already (it depends on the credential only).
    """
    base, sess, _ = algorithm.upper().partition("-SESS")
    h = _HASHES[base]
    if ha1 is None:
        ha1 = h(f"{username}:{realm}:{password}".encode())
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    ha2 = h(f"{method}:{uri}".encode())
    if qop:
        return h(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())
    return h(f"{ha1}:{nonce}:{ha2}".encode())  # RFC 2069 §2.1.1


@dataclass(frozen=True, slots=True)
class DigestResult:
    """Outcome of `verify`. `stale`: right password, expired nonce (RFC 7616 §3.3)."""

    ok: bool
    username: str | None = None
    stale: bool = False


_FAIL = DigestResult(False)
_NONCE_LEN = 8 + 8 + 16  # timestamp, salt, truncated HMAC


class DigestAuthenticator:
    """Digest challenges and verification for one realm."""

    def __init__(
        self,
        realm: str,
        secret: bytes,
        nonce_ttl: float,
        algorithm: str = "MD5",
    ) -> None:
        if algorithm.upper() not in _HASHES:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithm = algorithm.upper()
        self._secret = secret
        # Pure memos of the two costly steps of `verify` (bounded; cleared when full):
        # nonces already found to carry our signature, and HA1 per credential.
        self._good_nonces: dict[str, float] = {}
        self._ha1: dict[tuple[str, str, str], str] = {}  # (algorithm, user, password)

    # ------------------------------------------------------------------ nonces

    def _sign(self, head: bytes) -> bytes:
        return hmac.digest(self._secret, head, "sha256")[:16]

    def make_nonce(self, now: float, salt: bytes | None = None) -> str:
        head = struct.pack(">d", now) + (salt if salt is not None else os.urandom(8))[:8]
        return base64.urlsafe_b64encode(head + self._sign(head)).decode().rstrip("=")

    def _nonce_time(self, nonce: str) -> float | None:
        """Issue time of a nonce we signed, else None."""
        known = self._good_nonces.get(nonce)
        if known is not None:
            return known
        issued = self._check_nonce(nonce)
        if issued is not None:
            if len(self._good_nonces) >= 4096:
                self._good_nonces.clear()
            self._good_nonces[nonce] = issued
        return issued

    def _check_nonce(self, nonce: str) -> float | None:
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_LEN:
            return None
        head, sig = raw[:16], raw[16:]
        if not hmac.compare_digest(sig, self._sign(head)):
            return None
        issued: float = struct.unpack(">d", head[:8])[0]
        return issued

    def _ha1_of(self, base_algorithm: str, username: str, password: str) -> str:
        key = (base_algorithm, username, password)
        ha1 = self._ha1.get(key)
        if ha1 is None:
            if len(self._ha1) >= 65536:
                self._ha1.clear()
            ha1 = self._ha1[key] = _HASHES[base_algorithm](
                f"{username}:{self.realm}:{password}".encode()
            )
        return ha1

    # ------------------------------------------------------------------ server

    def challenge(self, now: float, stale: bool = False, algorithm: str | None = None) -> str:
        """A `WWW-Authenticate` value (RFC 7616 §3.3) with a fresh nonce."""
        algo = (algorithm or self.algorithm).upper()
        if algo not in _HASHES:
            raise ValueError(f"unsupported digest algorithm {algo!r}")
        realm = self.realm.replace("\\", "\\\\").replace('"', '\\"')
        value = (
            f'Digest realm="{realm}", qop="auth", algorithm={algo}, nonce="{self.make_nonce(now)}"'
        )
        if stale:
            value += ", stale=true"
        return value

    def verify(
        self,
        header: str,
        method: str,
        lookup: Callable[[str], str | None],
        now: float,
        uri: str | None = None,
    ) -> DigestResult:
        """Check a Digest `Authorization` value.

        `lookup(username)` returns the password or None. `uri`, if given, is
        the request target the digest must be for (RFC 7616 §3.4.6).
        """
        p = parse_digest(header)
        if p is None:
            return _FAIL
        username = p.get("username")
        nonce = p.get("nonce")
        digest_uri = p.get("uri")
        response = p.get("response")
        if username is None or nonce is None or digest_uri is None or response is None:
            return _FAIL
        if p.get("realm") != self.realm or p.get("userhash", "false").lower() == "true":
            return DigestResult(False, username)
        algorithm = p.get("algorithm", "MD5").upper()
        if algorithm.partition("-SESS")[0] not in _HASHES:
            return DigestResult(False, username)
        qop = p.get("qop", "")
        nc = p.get("nc", "")
        cnonce = p.get("cnonce", "")
        if qop and (qop.lower() != "auth" or not nc or not cnonce):
            return DigestResult(False, username)  # auth-int is not offered
        if algorithm.endswith("-SESS") and not cnonce:
            return DigestResult(False, username)
        if uri is not None and not _same_target(uri, digest_uri):
            return DigestResult(False, username)
        issued = self._nonce_time(nonce)
        if issued is None:
            return DigestResult(False, username)
        password = lookup(username)
        if password is None:
            return DigestResult(False, username)
        expected = digest_response(
            algorithm=algorithm,
            username=username,
            realm=self.realm,
            password=password,
            method=method,
            uri=digest_uri,
            nonce=nonce,
            nc=nc,
            cnonce=cnonce,
            qop=qop.lower(),
            ha1=self._ha1_of(algorithm.partition("-SESS")[0], username, password),
        )
        if not hmac.compare_digest(expected.encode(), response.strip().lower().encode()):
            return DigestResult(False, username)
        # RFC 7616 §3.3: stale only when the credentials were right.
        if not (issued <= now + 1.0 and now - issued <= self.nonce_ttl):
            return DigestResult(False, username, stale=True)
        return DigestResult(True, username)


def _same_target(request_uri: str, digest_uri: str) -> bool:
    if request_uri == digest_uri:
        return True
    # Some CPEs put the absolute URL in the digest uri; compare path and query.
    a, b = urlsplit(request_uri), urlsplit(digest_uri)
    return (a.path or "/", a.query) == (b.path or "/", b.query)
