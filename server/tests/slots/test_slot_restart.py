"""Slot files across processes: crash safety, restore after a restart, warm restarts (--slot-persist)."""

from __future__ import annotations

import signal
import sys
import threading
import time

import httpx
import pytest

from kubellama_server.testing.live import ServerProcess

# uvicorn re-raises SIGTERM after its graceful shutdown: the exit status says "killed by SIGTERM"
CLEAN_EXIT = (0, -signal.SIGTERM)
PROMPT = "the llama server keeps a prompt cache per slot " * 4


def post(url: str, path: str, body: dict | None = None, timeout: float = 120) -> dict:
    r = httpx.post(url + path, json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def complete(url: str, **body) -> dict:
    body.setdefault("prompt", PROMPT)
    body.setdefault("n_predict", 4)
    body.setdefault("cache_prompt", True)
    return post(url, "/completion", body)


def with_file_size_limit(proc: ServerProcess, argv: list[str], limit: int) -> ServerProcess:
    """Run the server under RLIMIT_FSIZE with SIGXFSZ at its default action (Python ignores it):
    a write past `limit` bytes kills the process in the middle of that write, like a crash."""
    shim = (
        "import resource, signal, sys; "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "signal.signal(signal.SIGXFSZ, signal.SIG_DFL); "
        "from kubellama_server.cli import main; main(sys.argv[1:])"
    )
    proc.cmd = [sys.executable, "-c", shim, *proc.cmd[-(len(argv) + 4):]]
    return proc


def test_a_crash_while_saving_never_leaves_a_partial_file(tiny_model, tmp_path):
    folder = tmp_path / "slots"
    args = ["-m", str(tiny_model), "-t", "1", "-np", "1", "-c", "2048", "--slot-save-path", str(folder)]
    srv = with_file_size_limit(ServerProcess(args), args, 24_000).start(log_path=tmp_path / "a.log")
    try:
        complete(srv.url, prompt="short")
        small = post(srv.url, "/slots/0?action=save", {"filename": "keep.bin"})
        assert small["n_written"] < 24_000
        complete(srv.url, prompt=PROMPT * 3)  # ~450 tokens: a state file well over the limit
        with pytest.raises(httpx.TransportError):
            httpx.post(srv.url + "/slots/0?action=save", json={"filename": "keep.bin"}, timeout=30)
        assert srv.proc.wait(10) == -signal.SIGXFSZ  # killed in the middle of the write
    finally:
        srv.stop(signal.SIGKILL)
    names = sorted(p.name for p in folder.iterdir())
    assert "keep.bin" in names and ".keep.bin.meta.json" in names
    assert any(n.endswith(".tmp") for n in names), names  # the interrupted write went to a temp file
    # the file under the final name is still the old, complete one: a new server restores it
    srv2 = ServerProcess(args).start(log_path=tmp_path / "b.log")
    try:
        restored = post(srv2.url, "/slots/0?action=restore", {"filename": "keep.bin"})
        assert restored["n_restored"] == small["n_saved"] and restored["n_read"] == small["n_written"]
    finally:
        srv2.stop()


def test_slot_file_survives_a_restart_on_the_tiny_model(tiny_model, tmp_path):
    folder = tmp_path / "slots"
    args = ["-m", str(tiny_model), "-t", "1", "-np", "2", "-c", "1024", "--slot-save-path", str(folder)]
    a = ServerProcess(args).start(log_path=tmp_path / "a.log")
    try:
        first = complete(a.url, id_slot=0)
        saved = post(a.url, "/slots/0?action=save", {"filename": "s.bin"})
    finally:
        assert a.stop() in CLEAN_EXIT
    b = ServerProcess(args).start(log_path=tmp_path / "b.log")
    try:
        restored = post(b.url, "/slots/1?action=restore", {"filename": "s.bin"})
        assert restored["n_restored"] == saved["n_saved"]
        again = complete(b.url, id_slot=1, n_predict=1)
        assert again["tokens_cached"] == first["tokens_evaluated"] - 1
    finally:
        b.stop()


@pytest.mark.slow
def test_restored_gemma_cache_is_reused_and_faster_than_a_cold_prompt(gemma_model, tmp_path):
    """Save, stop the process, start a new one, restore, continue: tokens_cached > 0 and faster."""
    folder = tmp_path / "slots"
    args = ["-m", str(gemma_model), "-np", "2", "-c", "4096", "--slot-save-path", str(folder)]
    prompt = " ".join(f"Paragraph {i}: the operator reconciles the llama server, its slots and its caches." for i in range(40))
    a = ServerProcess(args).start(log_path=tmp_path / "a.log", timeout=180)
    try:
        first = complete(a.url, prompt=prompt, id_slot=0, n_predict=8, temperature=0)
        n_prompt = first["tokens_evaluated"]
        assert 500 < n_prompt < 1500, n_prompt
        saved = post(a.url, "/slots/0?action=save", {"filename": "gemma.bin"})
        assert saved["n_saved"] == n_prompt + 8 - 1
    finally:
        assert a.stop() in CLEAN_EXIT
    b = ServerProcess(args).start(log_path=tmp_path / "b.log", timeout=180)
    try:
        # a new process pays one-time costs on its first decode: pay them before measuring
        complete(b.url, prompt="warm up", id_slot=1, n_predict=1)
        post(b.url, "/slots/1?action=erase")
        restored = post(b.url, "/slots/0?action=restore", {"filename": "gemma.bin"})
        assert restored["n_restored"] == saved["n_saved"]
        t0 = time.perf_counter()
        warm = complete(b.url, prompt=prompt, id_slot=0, n_predict=8, temperature=0)
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cold = complete(b.url, prompt=prompt, id_slot=1, n_predict=8, temperature=0)  # same prompt, empty slot
        cold_s = time.perf_counter() - t0
        assert warm["tokens_cached"] == n_prompt - 1 and cold["tokens_cached"] == 0
        # the restored KV is the real one, not garbage: greedy decoding picks the same first token
        assert warm["tokens"][:1] == first["tokens"][:1], (warm["content"], first["content"])
        # engine-side prompt time: one token instead of the whole prompt
        assert warm["timings"]["prompt_ms"] * 5 < cold["timings"]["prompt_ms"], (warm["timings"], cold["timings"])
        assert warm_s < cold_s, (warm_s, cold_s)  # wall clock too (loosely: CI machines are shared)
    finally:
        b.stop()


def _slots(url: str) -> list[dict]:
    return httpx.get(url + "/slots", timeout=10).json()


def test_warm_restart_end_to_end(tiny_model, tmp_path):
    """SIGTERM lets the running request finish, saves the caches; the next process restores them."""
    folder = tmp_path / "persist"
    args = ["-m", str(tiny_model), "-t", "1", "-np", "3", "-c", "3072", "--slot-save-path", str(folder), "--slot-persist",
            "--shutdown-timeout", "20"]
    a = ServerProcess(args).start(log_path=tmp_path / "a.log")
    first = complete(a.url, id_slot=0)
    other = complete(a.url, id_slot=1, prompt="a different conversation in slot one")
    running: dict = {}

    def long_request():
        running["r"] = httpx.post(a.url + "/completion", json={"prompt": "running when SIGTERM arrives", "id_slot": 2,
                                                                 "n_predict": 600, "ignore_eos": True}, timeout=60)

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.monotonic() + 10
    while not _slots(a.url)[2]["is_processing"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) in CLEAN_EXIT, a.log()
    t.join(5)
    # the running request was allowed to finish
    assert running["r"].status_code == 200 and running["r"].json()["tokens_predicted"] == 600
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "kubellama-slot-0.bin", "kubellama-slot-1.bin", "kubellama-slot-2.bin"]
    assert "3 slot(s) saved" in a.log()

    b = ServerProcess(args).start(log_path=tmp_path / "b.log")
    try:
        slots = _slots(b.url)
        assert slots[0]["n_past"] == first["tokens_evaluated"] + 3
        assert slots[1]["n_past"] == other["tokens_evaluated"] + 3
        assert slots[2]["n_past"] > 600
        again = complete(b.url, n_predict=1)  # no id_slot: the slot holding the prefix is picked
        assert again["id_slot"] == 0 and again["tokens_cached"] == first["tokens_evaluated"] - 1
        post(b.url, "/slots/1?action=erase")
    finally:
        assert b.stop() in CLEAN_EXIT
    # an erased slot's old file is removed at shutdown, so it cannot come back
    assert not (folder / "kubellama-slot-1.bin").exists()

    # a server with another context size skips the files with a warning and starts cold
    c = ServerProcess([*args[:6], "-c", "1536", *args[8:]]).start(log_path=tmp_path / "c.log")
    try:
        assert all(s["n_past"] == 0 for s in _slots(c.url))
        assert "warm restart: skipping kubellama-slot-0.bin" in c.log() and "different model or context size" in c.log()
        assert complete(c.url)["tokens_cached"] == 0
    finally:
        c.stop()


def test_shutdown_timeout_bounds_the_drain_and_slots_are_still_saved(tiny_model, tmp_path):
    """SIGTERM: new connections are refused at once; a request still running after
    --shutdown-timeout is cancelled; its slot's cache is saved all the same."""
    folder = tmp_path / "persist"
    args = ["-m", str(tiny_model), "-t", "1", "-np", "1", "-c", "4096", "--slot-save-path", str(folder), "--slot-persist",
            "--shutdown-timeout", "2", "--context-shift"]  # generates until cancelled
    a = ServerProcess(args).start(log_path=tmp_path / "a.log")
    outcome: dict = {}

    def endless():
        try:
            outcome["r"] = httpx.post(a.url + "/completion", json={"prompt": "never ending", "n_predict": 1_000_000,
                                                                     "ignore_eos": True}, timeout=60)
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=endless)
    t.start()
    deadline = time.monotonic() + 10
    while not _slots(a.url)[0]["is_processing"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    t_sigterm = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    refused = False
    while time.monotonic() - t_sigterm < 1.5:  # draining: the listener is closed, the process alive
        try:
            httpx.get(a.url + "/health", timeout=0.5)
        except httpx.ConnectError:
            refused = True
            break
        except httpx.TransportError:  # accepted just as the listener closed (reset, timeout): try again
            pass
        time.sleep(0.02)
    assert refused and a.proc.poll() is None
    assert a.proc.wait(20) in CLEAN_EXIT, a.log()
    elapsed = time.monotonic() - t_sigterm
    assert 1.5 < elapsed < 10, elapsed
    t.join(5)
    assert "r" not in outcome or outcome["r"].status_code != 200  # cut off, not finished
    assert (folder / "kubellama-slot-0.bin").is_file() and "1 slot(s) saved" in a.log()
    b = ServerProcess(args).start(log_path=tmp_path / "b.log")
    try:
        assert _slots(b.url)[0]["n_past"] > 10
    finally:
        b.stop()
