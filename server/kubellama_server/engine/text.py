"""Incremental detokenisation: UTF-8 assembly and stop strings.

Tokens may end in the middle of a UTF-8 character: bytes are held until the
character completes (invalid bytes become U+FFFD, never an exception). Text that
could be the start of a stop string is held back from the stream until resolved;
a matched stop string is never part of the output.
"""

from __future__ import annotations

import codecs


def find_partial_stop(text: str, stops: list[str]) -> int:
    """Index where a suffix of `text` starts that is a proper prefix of a stop string, or -1."""
    best = -1
    for stop in stops:
        # longest suffix of text that is a prefix of stop
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                pos = len(text) - k
                if best == -1 or pos < best:
                    best = pos
                break
    return best


def indent_cut(text: str, n_indent: int, start: int = 0) -> int:
    """llama.cpp's `n_indent`: where to cut `text` because a line after the first newline starts
    (its first non-blank character) with fewer than `n_indent` spaces or tabs; -1 if none does.
    Lines beginning before `start` were checked already."""
    nl = text.find("\n", max(0, start))
    while nl != -1:
        pos = nl + 1
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] != "\n" and pos - nl - 1 < n_indent:
            return pos
        nl = text.find("\n", nl + 1)
    return -1


class TextAssembler:
    """Accumulates generated text and decides what may be sent so far."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # all text generated so far (stop string excluded once matched)
        self.sent = 0  # chars of `text` already released to the client
        self.stopping_word = ""

    def push(self, piece: bytes) -> bool:
        """Add a token's bytes; True when a stop string matched (text is cut before it)."""
        chunk = self._decoder.decode(piece)
        if not chunk:
            return False
        start = max(self.sent, len(self.text) - max((len(s) for s in self.stops), default=0))
        self.text += chunk
        if self.stops:
            search_from = max(0, start)
            hit, hit_stop = -1, ""
            for stop in self.stops:
                pos = self.text.find(stop, search_from)
                if pos != -1 and (hit == -1 or pos < hit):
                    hit, hit_stop = pos, stop
            if hit != -1:
                self.text = self.text[:hit]
                self.stopping_word = hit_stop
                return True
        return False

    def cut(self, pos: int) -> None:
        """Drop the text from `pos` on (never what was already sent)."""
        self.text = self.text[:max(pos, self.sent)]

    def flush(self) -> None:
        """End of generation: complete any dangling bytes (as U+FFFD)."""
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self.text += tail

    @property
    def pending_bytes(self) -> bool:
        return bool(self._decoder.getstate()[0])

    def take_sendable(self, final: bool = False) -> str:
        """Text that can be released now (held back: a possible partial stop string)."""
        end = len(self.text)
        if not final and self.stops:
            partial = find_partial_stop(self.text, self.stops)
            if partial != -1 and partial >= self.sent:
                end = partial
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out
