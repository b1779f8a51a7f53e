"""Recently decoded Informs, so a periodic Inform is not parsed again.

A settled CPE sends the same periodic Inform every interval: byte for byte, but for
the `cwmp:ID` header and `CurrentTime`. Parsing and decoding it costs the ACS about
a third of a routine session's CPU. `InformMemo.decode` keeps the decodes of recent
Informs keyed by the body with those two values cut out; a body equal to a key is
answered from the memo with its own ID and time put back.

Why that is the same as decoding it (and so keeps every rule of `codec.decode`):
- only bodies with no comment, CDATA section, DTD or processing instruction (other
  than a leading XML declaration) are memoised, so every `<` in them starts a tag;
- such a body has exactly one element named `ID` and one named `CurrentTime` (any
  prefix), and their text is drawn from a small safe alphabet (no markup, no
  entity, no whitespace), so two bodies that differ only there are both
  well-formed or both not, with the same elements, attributes and other text;
- an entry is stored only after a full `codec.decode` of the body succeeded, gave
  an Inform, and took exactly the cut-out values as its cwmp:ID and CurrentTime.
Only Informs whose every event is "2 PERIODIC" are kept: those are the ones that
repeat. A BOOTSTRAP or DIAGNOSTICS COMPLETE Inform is sent once; keeping it would
only cost memory (and a garbage collector walking more objects).
So a hit stands for a full, hardened decode of a body that differs from this one
only in two plain-text values, which the hit carries over. Anything else, including
every body that fails to decode, goes through `codec.decode` each time.

Pure and sans-IO: the memo is a bounded LRU owned by its caller.
"""

from __future__ import annotations

import re
from collections import OrderedDict

from daemon.tr069 import codec
from daemon.tr069.codec import Envelope, Inform

PERIODIC = "2 PERIODIC"
_PERIODIC_BYTES = PERIODIC.encode()
# A namespace prefix (what may stand between "<" and ":" in a tag name).
_PREFIX = re.compile(rb"[A-Za-z_][\w.-]*")
_AFTER_NAME = frozenset(b" \t\n\r\f\v/>")
# The whole element, anchored at its start tag, with a safe value (group 2).
_ELEMENT = {
    b"ID": re.compile(
        rb"<((?:[A-Za-z_][\w.-]*:)?ID)(?:\s[^<>]*)?>([A-Za-z0-9._:@+/=-]{0,128})</\1>"
    ),
    b"CurrentTime": re.compile(
        rb"<((?:[A-Za-z_][\w.-]*:)?CurrentTime)(?:\s[^<>]*)?>([0-9A-Za-z:.+-]{0,64})</\1>"
    ),
}


class InformMemo:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Envelope] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def decode(self, data: bytes) -> Envelope:
        """`codec.decode(data)`, from the memo when an equal Inform was decoded."""
        if self.max_entries <= 0 or _PERIODIC_BYTES not in data:
            return codec.decode(data)  # (cannot be a periodic Inform: not worth the cut)
        cut = _cut(data)
        if cut is None:
            return codec.decode(data)
        key, cwmp_id, current_time = cut
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            b = hit.body
            assert isinstance(b, Inform)
            # The same DeviceId, events and parameters objects as the first decode
            # (callers may key their own caches on them), the new time.
            inform = Inform(
                b.device_id, b.events, b.max_envelopes, current_time, b.retry_count, b.parameters
            )
            return Envelope(inform, cwmp_id, hit.version, hit.hold_requests)
        self.misses += 1
        envelope = codec.decode(data)
        body = envelope.body
        if (
            isinstance(body, Inform)
            and envelope.cwmp_id == cwmp_id
            and body.current_time == current_time
            and all(e.code == PERIODIC for e in body.events)
        ):
            self._entries[key] = envelope
            if len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return envelope


def _cut(data: bytes) -> tuple[bytes, str, str] | None:
    """(the body without the two values, cwmp:ID, CurrentTime), or None
    when the body is not of the memoisable shape described above."""
    # "!" and "?" are rare in an Inform: look for the single bytes first (memchr).
    if b"!" in data and b"<!" in data:
        return None
    if data.find(b"?", 5) != -1 and data.find(b"<?", 1) != -1:
        return None
    ids = _start_tags(data, b"ID")
    times = _start_tags(data, b"CurrentTime")
    if len(ids) != 1 or len(times) != 1:
        return None
    found = ((b"ID", ids[0]), (b"CurrentTime", times[0]))
    spans: dict[bytes, tuple[int, int]] = {}
    values: dict[bytes, str] = {}
    for name, start in found:
        m = _ELEMENT[name].match(data, start)
        if m is None:
            return None
        spans[name] = m.span(2)
        values[name] = m.group(2).decode("ascii")
    (a0, a1), (b0, b1) = sorted(spans.values())
    # The key is the body itself without the two values (NUL marks the cuts; a body
    # that decodes has none of its own): exact, where a hash would only be likely.
    key = b"\x00".join((data[:a0], data[a1:b0], data[b1:]))
    return key, values[b"ID"], values[b"CurrentTime"]


def _start_tags(data: bytes, name: bytes) -> list[int]:
    """Where start tags named `name` (any prefix) begin. In a body without comments,
    CDATA or processing instructions every "<" opens a tag, so finding the name and
    looking at what surrounds it is enough (and far cheaper than a regex scan)."""
    out: list[int] = []
    n = len(name)
    i = data.find(name)
    while i != -1:
        if 0 < i and i + n < len(data) and data[i + n] in _AFTER_NAME:
            before = data[i - 1]
            if before == 0x3C:  # "<"
                out.append(i - 1)
            elif before == 0x3A:  # ":" of a prefix
                lt = data.rfind(b"<", 0, i)
                if lt != -1 and _PREFIX.fullmatch(data, lt + 1, i - 1):
                    out.append(lt)
        i = data.find(name, i + n)
    return out
