"""The Inform memo answers exactly what a full decode would, or decodes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.tr069.codec import CwmpDecodeError, decode
from daemon.tr069.memo import InformMemo, _start_tags

VECTORS = Path(__file__).parent.parent / "vectors" / "tr069"


def inform(cwmp_id: str = "ALCL00000001-1", time: str = "2026-11-25T19:00:00Z", **kw: str) -> bytes:
    version = kw.get("version", "1-0")
    firmware = kw.get("firmware", "3FE49362IJHK46")
    extra = kw.get("extra", "")
    header = kw.get("header", f'<cwmp:ID soap-env:mustUnderstand="1">{cwmp_id}</cwmp:ID>')
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:soap-enc="http://schemas.xmlsoap.org/soap/encoding/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xmlns:cwmp="urn:dslforum-org:cwmp-{version}">'
        f"<soap-env:Header>{header}</soap-env:Header><soap-env:Body>{extra}"
        "<cwmp:Inform><DeviceId><Manufacturer>Nokia</Manufacturer><OUI>00D0F6</OUI>"
        "<ProductClass>G-240W-F</ProductClass><SerialNumber>ALCL00000001</SerialNumber>"
        '</DeviceId><Event soap-enc:arrayType="cwmp:EventStruct[1]"><EventStruct>'
        "<EventCode>2 PERIODIC</EventCode><CommandKey></CommandKey></EventStruct></Event>"
        f"<MaxEnvelopes>1</MaxEnvelopes><CurrentTime>{time}</CurrentTime>"
        "<RetryCount>0</RetryCount>"
        '<ParameterList soap-enc:arrayType="cwmp:ParameterValueStruct[1]">'
        "<ParameterValueStruct><Name>Device.DeviceInfo.SoftwareVersion</Name>"
        f'<Value xsi:type="xsd:string">{firmware}</Value></ParameterValueStruct>'
        "</ParameterList></cwmp:Inform></soap-env:Body></soap-env:Envelope>"
    ).encode()


def test_a_repeat_is_answered_from_the_memo_with_its_own_id_and_time() -> None:
    memo = InformMemo(10)
    first = inform()
    assert memo.decode(first) == decode(first)
    again = inform("ALCL00000001-2", "2026-11-25T20:00:00.5+01:00")
    assert memo.decode(again) == decode(again)
    assert (memo.hits, memo.misses, len(memo)) == (1, 1, 1)


@settings(max_examples=200, deadline=None)
@given(
    st.text("ABCabc0123456789._:-", min_size=0, max_size=40),
    st.text("0123456789T:.+-Z", min_size=0, max_size=32),
)
def test_hits_equal_full_decodes(cwmp_id: str, time: str) -> None:
    memo = InformMemo(10)
    memo.decode(inform())
    body = inform(cwmp_id, time)
    assert memo.decode(body) == decode(body)
    assert memo.hits == 1


@pytest.mark.parametrize(
    "changed",
    [
        {"firmware": "3FE49362IJHK47"},
        {"version": "1-2"},
        {"extra": "<!-- a comment --> "},
    ],
)
def test_any_other_difference_is_decoded_again(changed: dict[str, str]) -> None:
    memo = InformMemo(10)
    memo.decode(inform())
    body = inform(**changed)
    assert memo.decode(body) == decode(body)
    assert memo.hits == 0


@pytest.mark.parametrize(
    "body",
    [
        inform(extra="<!-- c -->"),  # comments could hide a second ID
        inform(cwmp_id="<![CDATA[x]]>"),
        inform(extra="<?pi x?>"),
        inform(header='<cwmp:ID soap-env:mustUnderstand="1">1</cwmp:ID><x:ID xmlns:x="u">1</x:ID>'),
        inform(cwmp_id="has space"),  # outside the safe alphabet
        inform(cwmp_id="a&amp;b"),
        inform(header=""),  # no ID at all
    ],
)
def test_bodies_outside_the_safe_shape_are_never_memoised(body: bytes) -> None:
    memo = InformMemo(10)
    for _ in range(2):
        try:
            expected = decode(body)
        except CwmpDecodeError:
            with pytest.raises(CwmpDecodeError):
                memo.decode(body)
        else:
            assert memo.decode(body) == expected
    assert memo.hits == 0 and len(memo) == 0


def test_undecodable_and_non_inform_bodies_are_not_kept() -> None:
    memo = InformMemo(10)
    broken = inform().replace(b"</cwmp:Inform>", b"</cwmp:Infrom>")
    for _ in range(2):
        with pytest.raises(CwmpDecodeError):
            memo.decode(broken)
    response = (VECTORS / "get_parameter_values_response.xml").read_bytes()
    assert memo.decode(response) == decode(response)
    assert len(memo) == 0 and memo.hits == 0


def test_bounded_lru_and_off_switch() -> None:
    memo = InformMemo(2)
    bodies = [inform(firmware=f"fw{i}") for i in range(3)]
    for b in bodies:
        memo.decode(b)
    assert len(memo) == 2
    memo.decode(bodies[0])  # evicted first: decoded again
    assert memo.hits == 0
    off = InformMemo(0)
    off.decode(bodies[1])
    off.decode(bodies[1])
    assert (off.hits, len(off)) == (0, 0)


def test_only_periodic_informs_are_kept() -> None:
    memo = InformMemo(10)
    boot = inform().replace(b"2 PERIODIC", b"0 BOOTSTRAP")
    for _ in range(2):
        assert memo.decode(boot) == decode(boot)
    assert (memo.hits, len(memo)) == (0, 0)


_TAG_RE = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(ID|CurrentTime)[\s/>]")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"<",
                b">",
                b"/",
                b":",
                b"ID",
                b"CurrentTime",
                b"cwmp",
                b" ",
                b"x",
                b"S",
                b"\n",
                b"=",
                b'"',
            ]
        ),
        max_size=40,
    )
)
def test_start_tag_finder_agrees_with_a_regex_scan(parts: list[bytes]) -> None:
    """In a body without comments, CDATA or PIs, the cheap finder sees exactly the
    start tags a full regex scan sees."""
    data = b"".join(parts)
    for name in (b"ID", b"CurrentTime"):
        expected = [m.start() for m in _TAG_RE.finditer(data) if m.group(1) == name]
        assert _start_tags(data, name) == expected
