"""Recently decoded Informs, so a periodic Inform is not parsed again.

A settled CPE sends the same periodic Inform every interval: byte for byte, but for
the `cwmp:ID` header and `CurrentTime`. Parsing and decoding it costs the ACS about
a third of a routine session's CPU. `InformMemo.decode` keeps the decodes of recent
Informs keyed by a hash of the body with those two values cut out; a body that
hashes the same is answered from the memo with its own ID and time put back.

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

import hashlib
import re
from collections import OrderedDict
from dataclasses import replace

from daemon.tr069 import codec
from daemon.tr069.codec import Envelope, Inform

PERIODIC = "2 PERIODIC"
_PERIODIC_BYTES = PERIODIC.encode()
# Start tags named ID or CurrentTime, any prefix: one scan finds them all.
_TAGS = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(ID|CurrentTime)[\s/>]")
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
            assert isinstance(hit.body, Inform)
            return Envelope(
                replace(hit.body, current_time=current_time),
                cwmp_id,
                hit.version,
                hit.hold_requests,
            )
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
    """(hash of the body without the two values, cwmp:ID, CurrentTime), or None
    when the body is not of the memoisable shape described above."""
    if b"<!" in data or data.find(b"<?", 1) != -1:
        return None
    found = [(m.group(1), m.start()) for m in _TAGS.finditer(data)]
    if len(found) != 2 or found[0][0] == found[1][0]:
        return None
    spans: dict[bytes, tuple[int, int]] = {}
    values: dict[bytes, str] = {}
    for name, start in found:
        m = _ELEMENT[name].match(data, start)
        if m is None:
            return None
        spans[name] = m.span(2)
        values[name] = m.group(2).decode("ascii")
    (a0, a1), (b0, b1) = sorted(spans.values())
    view = memoryview(data)
    h = hashlib.blake2b(digest_size=16)
    h.update(view[:a0])
    h.update(b"\x00")
    h.update(view[a1:b0])
    h.update(b"\x00")
    h.update(view[b1:])
    return h.digest(), values[b"ID"], values[b"CurrentTime"]
