"""Download progress: a bar on a terminal, periodic JSON lines otherwise (for `kubectl logs`).

Everything goes to stderr; stdout is kept for the final path.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TextIO

from .cache import human_bytes

MODES = ("auto", "tty", "json", "none")


def make_progress(mode: str = "auto", stream: TextIO | None = None) -> "Progress":
    stream = stream or sys.stderr
    if mode not in MODES:
        from .errors import UsageError

        raise UsageError(f"progress mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "auto":
        mode = "tty" if _isatty(stream) else "json"
    if mode == "tty":
        return TtyProgress(stream)
    if mode == "json":
        interval = float(os.environ.get("KUBELLAMA_FETCH_PROGRESS_INTERVAL", "2"))
        return JsonProgress(stream, interval=interval)
    return Progress()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Silent reporter; also the interface."""

    def __init__(self) -> None:
        self.name = ""
        self.total: int | None = None
        self.done = 0
        self.offset = 0
        self.started = time.monotonic()

    def start(self, name: str, total: int | None, offset: int = 0, url: str = "") -> None:
        self.name, self.total, self.done, self.offset = name, total, offset, offset
        self.started = time.monotonic()

    def update(self, done: int) -> None:
        self.done = done

    def finish(self, path: str, sha256: str) -> None:
        pass

    def message(self, text: str, event: str = "message") -> None:
        pass

    # derived numbers
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.done - self.offset) / elapsed if elapsed > 0 else 0.0

    def eta(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate <= 0:
            return None
        return max(self.total - self.done, 0) / rate

    def percent(self) -> float | None:
        if not self.total:
            return None
        return round(100.0 * self.done / self.total, 1)


class JsonProgress(Progress):
    def __init__(self, stream: TextIO, interval: float = 2.0) -> None:
        super().__init__()
        self.stream = stream
        self.interval = interval
        self._last = 0.0

    def _emit(self, **fields) -> None:
        fields = {"logger": "kubellama-fetch", **fields}
        self.stream.write(json.dumps(fields, separators=(",", ":")) + "\n")
        self.stream.flush()

    def _progress_fields(self) -> dict:
        eta = self.eta()
        return {
            "file": self.name,
            "bytes_done": self.done,
            "bytes_total": self.total,
            "percent": self.percent(),
            "rate_bytes_per_second": round(self.rate()),
            "eta_seconds": None if eta is None else round(eta, 1),
        }

    def start(self, name, total, offset=0, url=""):
        super().start(name, total, offset, url)
        self._last = time.monotonic()
        self._emit(event="start", file=name, url=url, bytes_total=total, resumed_from=offset)

    def update(self, done):
        super().update(done)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(event="progress", **self._progress_fields())

    def finish(self, path, sha256):
        self._emit(event="progress", **{**self._progress_fields(), "percent": 100.0 if self.total else None})
        self._emit(event="done", file=self.name, path=path, sha256=sha256,
                   seconds=round(time.monotonic() - self.started, 3))

    def message(self, text, event="message"):
        self._emit(event=event, message=text)


class TtyProgress(Progress):
    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._last = 0.0
        self._drawn = False

    def start(self, name, total, offset=0, url=""):
        super().start(name, total, offset, url)
        if offset:
            self.stream.write(f"resuming {name} from {human_bytes(offset)}\n")
        self._draw()

    def update(self, done):
        super().update(done)
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self._draw()

    def finish(self, path, sha256):
        self._draw()
        self.stream.write("\n")
        self._drawn = False
        self.stream.flush()

    def message(self, text, event="message"):
        if self._drawn:
            self.stream.write("\n")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self) -> None:
        rate = f"{human_bytes(self.rate())}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            fill = int(frac * self.WIDTH)
            bar = "#" * fill + "-" * (self.WIDTH - fill)
            eta = self.eta()
            eta_s = "--:--:--" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
            line = (f"{self.name} {frac * 100:5.1f}% [{bar}] {human_bytes(self.done)}/{human_bytes(self.total)} "
                    f"{rate} ETA {eta_s}")
        else:
            line = f"{self.name} {human_bytes(self.done)} {rate}"
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self._drawn = True
