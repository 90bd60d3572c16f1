"""Stop strings on streamed text: print what is safe now, hold back what may be the start of a stop."""

from __future__ import annotations

from typing import Iterable


class StopMatcher:
    """Feed text deltas in order; each `feed` returns (text safe to show now, stopped).

    Text that could still grow into a stop string is held back until it either completes one (then
    it is dropped with everything after it) or stops matching (then it is released). With no stop
    strings every delta passes straight through. After a stop, further deltas are swallowed.
    """

    def __init__(self, stop_strings: Iterable[str] = ()):
        self.stops = sorted({s for s in stop_strings if s}, key=len)  # "" would stop at once: ignored
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return delta, False
        text = self._pending + delta
        hit = self._first_stop(text)
        if hit is not None:
            self.stopped, self._pending = True, ""
            return text[:hit], True
        keep = self._held_suffix_len(text)
        self._pending = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """The end of the stream: release whatever was held back (nothing if a stop was hit)."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _first_stop(self, text: str) -> int | None:
        """Where the earliest complete stop string starts in text, if any."""
        best = None
        for stop in self.stops:
            at = text.find(stop)
            if at >= 0 and (best is None or at < best):
                best, self.matched = at, stop
        return best

    def _held_suffix_len(self, text: str) -> int:
        """Length of the longest end of text that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
