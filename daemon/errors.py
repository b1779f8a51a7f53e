"""Error roots shared by every protocol.

`DecodeError` is the only exception a codec may raise for bad input: the peer
sent garbage. Each protocol subclasses it once. Errors that carry a wire answer
(a SOAP fault, a RADIUS reject) subclass `WireError`.
"""

from __future__ import annotations


class DecodeError(ValueError):
    """The peer sent bytes we cannot decode."""


class WireError(Exception):
    """An error that maps to an answer on the wire."""
