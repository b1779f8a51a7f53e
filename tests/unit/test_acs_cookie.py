"""The ACS's own Cookie header parsing (sessions are found by it on every POST)."""

from __future__ import annotations

import pytest

from daemon.tr069.acs import _cookie_value


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("turnup_cwmp=abc", "abc"),
        ("a=1; turnup_cwmp=abc; b=2", "abc"),
        ('turnup_cwmp="abc"', "abc"),
        ("  turnup_cwmp = abc ", "abc"),
        ("a=1;turnup_cwmp=abc", "abc"),
        ("turnup_cwmpx=abc", None),
        ("a=1; b", None),
        ("", None),
        ("=;;;", None),
    ],
)
def test_cookie_value(header: str, value: str | None) -> None:
    assert _cookie_value(header, "turnup_cwmp") == value
