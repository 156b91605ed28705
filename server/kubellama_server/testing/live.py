"""Run a kubellama server for tests: in-process (uvicorn on a thread) or as a subprocess.

Both listen on a free loopback port and talk real HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from .wait import free_port  # noqa: F401  (re-exported: the tests' one free_port)


def wait_healthy(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.get(url + "/health", timeout=2)
            last = r.status_code
            if r.status_code == 200:
                return
            if r.status_code == 500:
                raise RuntimeError(f"server failed to load: {r.text}")
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"server at {url} not healthy after {timeout}s (last status {last})")


class LiveServer:
    """The real app under uvicorn in a background thread of this process."""

    def __init__(self, argv: list[str], *, wait: bool = True, prepare=None):
        from ..cli import parse_settings

        self.port = free_port()
        self.settings, _ = parse_settings(argv + ["--host", "127.0.0.1", "--port", str(self.port)], environ={})
        self.url = f"http://127.0.0.1:{self.port}"
        self.wait = wait
        self.prepare = prepare  # called with the Engine before the model loads
        self.app = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def engine(self):
        return self.app.state.engine

    def start(self) -> "LiveServer":
        from ..http.app import create_app

        self.app = create_app(self.settings)
        if self.prepare is not None:
            self.prepare(self.app.state.engine)
        from ..http.server_options import uvicorn_options

        self._server, self._thread = serve_in_thread(self.app, self.port, "in-process server",
                                                     **uvicorn_options(self.settings))
        if self.wait:
            wait_healthy(self.url)
        return self

    def stop(self) -> None:
        stop_thread_server(self._server, self._thread)


def serve_in_thread(app, port: int, what: str, **options):
    """`app` under uvicorn on 127.0.0.1:`port` in a daemon thread; returns (server, thread) once it
    listens (the in-process servers of the tests: kubellama-server's and the router's)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, **options))
    server.install_signal_handlers = lambda: None
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.01)
    return server, thread


def stop_thread_server(server, thread) -> None:
    if server is not None:
        server.should_exit = True
    if thread is not None:
        thread.join(15)


class ServerProcess:
    """`kubellama-server` as a child process (for CLI, signals and restarts)."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("kubellama-server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kubellama_server"]
        self.cmd = cmd + argv + ["--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def start(self, *, wait: bool = True, log_path: Path | None = None, timeout: float = 120.0) -> "ServerProcess":
        self.log_path = log_path
        out = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            wait_healthy(self.url, timeout, self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
