"""ACS-side HTTP Basic and Digest authentication."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.tr069.auth import (
    DigestAuthenticator,
    DigestResult,
    digest_response,
    parse_basic,
    parse_digest,
)

CI = settings(derandomize=True, max_examples=200, deadline=None)

REALM = "turnup-acs"
SECRET = b"k" * 32
TTL = 300.0
T0 = 1_767_225_600.0
USERS = {"cpe": "s3cret", "empty": ""}


def lookup(user: str) -> str | None:
    return USERS.get(user)


def auth() -> DigestAuthenticator:
    return DigestAuthenticator(REALM, SECRET, TTL)


def nonce_of(challenge: str) -> str:
    params = parse_digest(challenge)
    assert params is not None
    return params["nonce"]


def header(
    a: DigestAuthenticator,
    nonce: str,
    *,
    user: str = "cpe",
    password: str = "s3cret",
    algorithm: str = "MD5",
    qop: str = "auth",
    uri: str = "/cwmp",
    method: str = "POST",
) -> str:
    resp = digest_response(
        algorithm=algorithm,
        username=user,
        realm=a.realm,
        password=password,
        method=method,
        uri=uri,
        nonce=nonce,
        nc="00000001" if qop else "",
        cnonce="0a4f113b" if qop else "",
        qop=qop,
    )
    h = f'Digest username="{user}", realm="{a.realm}", nonce="{nonce}", uri="{uri}", '
    h += f'response="{resp}", algorithm={algorithm}'
    if qop:
        h += f', qop={qop}, nc=00000001, cnonce="0a4f113b"'
    return h


# --------------------------------------------------------------------------- Basic


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Basic " + b64("cpe:s3cret"), ("cpe", "s3cret")),
        ("basic " + b64("cpe:"), ("cpe", "")),
        ("BASIC  " + b64("cpe:a:b"), ("cpe", "a:b")),
        ("Basic " + b64(":"), ("", "")),
        ("Basic " + base64.b64encode("ü:pw".encode("latin-1")).decode(), ("ü", "pw")),
        ("Basic " + b64("nocolon"), None),
        ("Basic !!!", None),
        ("Digest abc", None),
        ("", None),
    ],
)
def test_parse_basic(value: str, expected: tuple[str, str] | None) -> None:
    assert parse_basic(value) == expected


# --------------------------------------------------------------------------- RFC 7616 vectors

# RFC 7616 §3.9.1. The RFC's realm is "http-auth@example.org".
RFC = {
    "username": "Mufasa",
    "password": "Circle of Life",
    "realm": "http-auth@example.org",
    "method": "GET",
    "uri": "/dir/index.html",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "nc": "00000001",
    "qop": "auth",
}


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_vectors(algorithm: str, expected: str) -> None:
    assert digest_response(algorithm=algorithm, **RFC) == expected


def test_rfc2069_and_sess_by_hand() -> None:
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5("u:r:p")
    ha2 = md5("POST:/x")
    plain = digest_response(
        algorithm="MD5", username="u", realm="r", password="p", method="POST", uri="/x", nonce="N"
    )
    assert plain == md5(f"{ha1}:N:{ha2}")
    sess = digest_response(
        algorithm="MD5-sess",
        username="u",
        realm="r",
        password="p",
        method="POST",
        uri="/x",
        nonce="N",
        nc="00000001",
        cnonce="C",
        qop="auth",
    )
    assert sess == md5(f"{md5(f'{ha1}:N:C')}:N:00000001:C:auth:{ha2}")


# --------------------------------------------------------------------------- verify


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"])
def test_valid_response_is_accepted(algorithm: str) -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    got = a.verify(header(a, nonce, algorithm=algorithm), "POST", lookup, T0 + 5, uri="/cwmp")
    assert got == DigestResult(True, "cpe")


def test_rfc2069_response_without_qop_is_accepted() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    assert a.verify(header(a, nonce, qop=""), "POST", lookup, T0).ok


def test_empty_password_user() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    assert a.verify(header(a, nonce, user="empty", password=""), "POST", lookup, T0).ok


def test_wrong_password() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    got = a.verify(header(a, nonce, password="nope"), "POST", lookup, T0)
    assert got == DigestResult(False, "cpe", stale=False)


def test_unknown_user() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    assert not a.verify(header(a, nonce, user="who"), "POST", lookup, T0).ok


def test_stale_nonce_and_replay_after_expiry() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    h = header(a, nonce)
    assert a.verify(h, "POST", lookup, T0 + TTL).ok
    # The same valid header replayed after the nonce expired: stale, not ok.
    assert a.verify(h, "POST", lookup, T0 + TTL + 1) == DigestResult(False, "cpe", stale=True)
    # Wrong password with an expired nonce is not reported as stale.
    bad = header(a, nonce, password="nope")
    assert a.verify(bad, "POST", lookup, T0 + TTL + 1).stale is False


def test_nonce_from_the_future_is_stale() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0 + 3600))
    assert a.verify(header(a, nonce), "POST", lookup, T0).stale


def test_stale_challenge() -> None:
    value = auth().challenge(T0, stale=True, algorithm="SHA-256")
    params = parse_digest(value)
    assert params is not None
    assert params["stale"] == "true" and params["algorithm"] == "SHA-256"
    assert params["realm"] == REALM and params["qop"] == "auth"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n[:-2] + ("AA" if not n.endswith("AA") else "BB"),  # signature broken
        lambda n: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",  # not ours
        lambda n: "",
        lambda n: "!!!",
    ],
)
def test_forged_nonce_is_refused(mangle: Callable[[str], str]) -> None:
    a = auth()
    nonce = mangle(nonce_of(a.challenge(T0)))
    got = a.verify(header(a, nonce), "POST", lookup, T0)
    assert not got.ok and not got.stale


def test_nonce_from_another_secret_is_refused() -> None:
    other = DigestAuthenticator(REALM, b"other", TTL)
    nonce = nonce_of(other.challenge(T0))
    assert not auth().verify(header(auth(), nonce), "POST", lookup, T0).ok


def test_realm_method_and_uri_must_match() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    h = header(a, nonce)
    assert not a.verify(h.replace(REALM, "other"), "POST", lookup, T0).ok
    assert not a.verify(h, "GET", lookup, T0).ok
    assert not a.verify(h, "POST", lookup, T0, uri="/other").ok
    # An absolute URL in the digest uri matches the same path.
    full = header(a, nonce, uri="http://acs.example:7547/cwmp")
    assert a.verify(full, "POST", lookup, T0, uri="/cwmp").ok


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        "Basic abc",
        'Digest username="cpe"',
        'Digest username="cpe", username="x", realm="r", nonce="n", uri="/", response="r"',
        'Digest username="unterminated, realm="r"',
        "Digest ,,,",
        "Digest a=b c=d",
        "Digest " + "a=b, " * 2000,
    ],
)
def test_bad_headers_fail_without_raising(value: str) -> None:
    assert not auth().verify(value, "POST", lookup, T0).ok


def test_auth_int_and_userhash_are_refused() -> None:
    a = auth()
    nonce = nonce_of(a.challenge(T0))
    h = header(a, nonce)
    assert not a.verify(h.replace("qop=auth", "qop=auth-int"), "POST", lookup, T0).ok
    assert not a.verify(h + ", userhash=true", "POST", lookup, T0).ok


def test_parse_digest_quoted_strings() -> None:
    got = parse_digest('digest username="a,b", realm="x\\"y", nc=00000001 ,qop=auth,uri="/a?b=c,d"')
    assert got == {
        "username": "a,b",
        "realm": 'x"y',
        "nc": "00000001",
        "qop": "auth",
        "uri": "/a?b=c,d",
    }


@CI
@given(st.text(max_size=200))
def test_property_any_header_never_raises(value: str) -> None:
    a = auth()
    assert not a.verify(value, "POST", lookup, T0).ok
    assert not a.verify("Digest " + value, "POST", lookup, T0).ok
    parse_basic(value)


# --------------------------------------------------------------------------- independent client


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_httpx_digest_client_is_accepted(algorithm: str) -> None:
    a = auth()
    request = httpx.Request("POST", "http://acs.example:7547/cwmp", content=b"<Inform/>")
    flow = httpx.DigestAuth("cpe", "s3cret").sync_auth_flow(request)
    first = next(flow)
    assert "Authorization" not in first.headers
    challenge = httpx.Response(
        401, headers={"WWW-Authenticate": a.challenge(T0, algorithm=algorithm)}, request=first
    )
    second = flow.send(challenge)
    got = a.verify(second.headers["Authorization"], "POST", lookup, T0 + 1, uri="/cwmp")
    assert got == DigestResult(True, "cpe")
    # And with the wrong password, httpx's answer is refused.
    flow = httpx.DigestAuth("cpe", "wrong").sync_auth_flow(request)
    first = next(flow)
    challenge = httpx.Response(
        401, headers={"WWW-Authenticate": a.challenge(T0, algorithm=algorithm)}, request=first
    )
    second = flow.send(challenge)
    assert not a.verify(second.headers["Authorization"], "POST", lookup, T0 + 1).ok


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab=", \\\t\nxyzAZ09-_', max_size=60))
def test_digest_split_fast_path_agrees_with_the_full_grammar(rest: str) -> None:
    from daemon.tr069.auth import _scan_params, _split_params

    fast = _split_params(rest)
    assert fast is None or fast == _scan_params(rest)


def test_digest_split_fast_path_takes_the_common_shape() -> None:
    from daemon.tr069.auth import _scan_params, _split_params

    rest = (
        'username="cpe", realm="turnup", nonce="abc-_", uri="/acs", algorithm=MD5, '
        'response="0123abcd", qop=auth, nc=00000001, cnonce="ff00"'
    )
    assert _split_params(rest) == _scan_params(rest) is not None
    assert _split_params('uri="/acs?a=1,2"') is None  # a comma inside: the full grammar decides
    assert _scan_params('uri="/acs?a=1,2"') == {"uri": "/acs?a=1,2"}
