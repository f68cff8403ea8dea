"""Stop sequences: a sample ends at the first occurrence of any of them, and the stop text
itself is never returned (as in OpenAI's API).

Text arrives in blocks; a block may end inside a stop sequence, so the end of each block that
could still begin one is held back until the next block tells. Streamed text therefore never
runs past a stop, wherever the blocks are cut.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from lstmgen.errors import LstmgenError


def stop_list(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    """Check stop sequences; one string or several, ``None`` for none.

    Example:
        >>> stop_list("\\n\\n"), stop_list(["END", "\\n"]), stop_list(None)
        (('\\n\\n',), ('END', '\\n'), ())
    """
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    for s in stops:
        if not isinstance(s, str):
            raise LstmgenError(f"a stop sequence must be text, got {s!r}")
        if not s:
            raise LstmgenError("a stop sequence is empty",
                               hint="give the text that ends a sample, e.g. --stop '\\n'")
    return stops


MAX_STOPS, MAX_STOP_CHARS = 16, 500  # per HTTP request


def check_request_stop(stop):
    """Check a request's ``stop`` field (a string, a list, or ``None``); raises
    ``ValueError``, which pydantic reports as a 422 / 400 naming the field."""
    stops = [stop] if isinstance(stop, str) else stop or []
    if len(stops) > MAX_STOPS:
        raise ValueError(f"at most {MAX_STOPS} stop sequences")
    if any(not s for s in stops):
        raise ValueError("a stop sequence is empty")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise ValueError(f"a stop sequence is over {MAX_STOP_CHARS} characters")
    return stop


def unescape(text: str) -> str:
    r"""The stop sequence a shell user means: ``\n``, ``\t``, ``\\`` and the other Python
    escapes interpreted, all else (including non-ASCII text) kept.

    Example:
        >>> unescape(r"\n\nTHE END"), unescape("naïve\\t")
        ('\n\nTHE END', 'naïve\t')
    """
    try:
        return codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
    except UnicodeDecodeError as e:
        raise LstmgenError(f"cannot read the escapes in {text!r} ({e.reason})",
                           hint=r"write a backslash as \\") from None


class StopFilter:
    """Cuts one sample's text at its first stop sequence.

    ``feed`` takes each new piece of text and returns what may be shown now; ``flush`` the
    rest at the end. ``stopped`` turns true once a stop sequence has appeared; from then on
    nothing more is returned.

    Example:
        >>> f = StopFilter(["\\n\\n"])
        >>> f.feed("To be\\n"), f.feed("\\nor not"), f.stopped
        ('To be', '', True)
    """

    def __init__(self, stops: Iterable[str]):
        self.stops = stop_list(list(stops))
        self.longest = max((len(s) for s in self.stops), default=0)
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self.held + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped, self.held = True, ""
            return text[: min(found)]
        keep = self._prefix_at_end(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return "" if self.stopped else held

    def _prefix_at_end(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some stop sequence."""
        for k in range(min(len(text), self.longest - 1), 0, -1):
            tail = text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0
