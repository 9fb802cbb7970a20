"""`WireBytes`: a message already in SMTP's line form, CRLF throughout, with no bare CR or LF.

The composer builds messages that way and the DKIM signer gives back nothing else; the signer and the
transport would otherwise each count the line ends of every message again (three passes over its bytes,
~10 µs a message apiece) to decide whether it needs normalising. Only code that guarantees the property by
construction wraps its bytes in this type; anything derived from them (a slice, a concatenation) is plain
`bytes` again and gets checked as before.
"""

from __future__ import annotations


class WireBytes(bytes):
    """Bytes with CRLF line ends throughout (no bare CR, no bare LF)."""

    __slots__ = ()
