"""The `kubellama-fetch` command: output, progress, exit codes, termination message, concurrent runs."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_prints_the_path_and_json_progress_when_not_a_tty(model_server, tiny_bytes, tmp_path, run_fetch):
    url = model_server.add("/tiny.gguf", tiny_bytes, rate=2_000_000)  # ~0.3 s: several progress lines
    res = run_fetch("--url", url, "--dest", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{tmp_path / 'tiny.gguf'}\n"
    events = _events(res.stderr)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 3
    assert all(e["bytes_total"] == len(tiny_bytes) for e in progress)
    assert [e["bytes_done"] for e in progress] == sorted(e["bytes_done"] for e in progress)
    assert progress[-1]["percent"] == 100.0 and progress[-1]["bytes_done"] == len(tiny_bytes)
    assert 0 < progress[0]["percent"] < 100 and progress[0]["eta_seconds"] is not None
    assert progress[0]["rate_bytes_per_second"] > 0


def test_cached_run_is_quick_and_quiet_on_stdout(model_server, tiny_bytes, tmp_path, run_fetch):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    assert run_fetch("--url", url, "--dest", str(tmp_path)).returncode == 0
    n = len(model_server.requests)
    res = run_fetch("--url", url, "--dest", str(tmp_path))
    assert res.returncode == 0 and res.stdout.strip() == str(tmp_path / "tiny.gguf")
    assert len(model_server.requests) == n
    assert [e["event"] for e in _events(res.stderr)] == ["cached"]
    # the cached path does not even import the HTTP stack
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; from kubellama_server.fetch.cli import main; "
         f"rc = main(['--url', {url!r}, '--dest', {str(tmp_path)!r}, '--progress', 'none']); "
         "print(sorted(m for m in ('httpx', 'huggingface_hub') if m in sys.modules)); sys.exit(rc)"],
        capture_output=True, text=True)
    assert probe.returncode == 0 and probe.stdout.splitlines()[-1] == "[]"


def test_progress_bar_on_a_terminal(model_server, tiny_bytes, tmp_path):
    url = model_server.add("/tiny.gguf", tiny_bytes, rate=1_500_000)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "kubellama_server.fetch", "--url", url, "--dest", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=slave, text=False)
    os.close(slave)
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 10)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    stdout, _ = proc.communicate(timeout=30)
    os.close(master)
    assert proc.returncode == 0
    assert stdout.decode().strip() == str(tmp_path / "tiny.gguf")
    text = out.decode()
    assert "\r" in text and "tiny.gguf" in text
    assert "100.0% [" + "#" * 30 + "]" in text
    assert "/s ETA " in text and "KiB" in text
    assert "{" not in text, "no JSON on a terminal"


@pytest.mark.parametrize("status,code", [(404, 3), (401, 4), (403, 4)])
def test_exit_codes_and_termination_message(model_server, tiny_bytes, tmp_path, run_fetch, status, code):
    url = model_server.add("/tiny.gguf", tiny_bytes, status=status)
    log = tmp_path / "termination-log"
    log.write_text("")
    res = run_fetch("--url", url, "--dest", str(tmp_path / "m"), env={"KUBELLAMA_TERMINATION_LOG": str(log)})
    assert res.returncode == code
    assert res.stdout == ""
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("kubellama-fetch: error:") and str(status) in line
    assert log.read_text() == line and "\n" not in log.read_text()


@pytest.mark.parametrize("args,code,needle", [
    ([], 2, "exactly one model source"),
    (["--url", "http://h/a.gguf", "--sha256", "xyz"], 2, "64 hex"),
    (["--hf-repo", "org/name", "--offline", "--dest", "{tmp}"], 3, "--hf-file"),  # never picked online
    (["--bogus"], 2, "unrecognized arguments"),
    (["--url", "http://127.0.0.1:9/a.gguf", "--offline", "--dest", "{tmp}"], 3, "offline"),
    (["--url", "http://127.0.0.1:9/a.gguf", "--retries", "0", "--dest", "{tmp}"], 5, "cannot reach"),
])
def test_failures_have_distinct_exit_codes(args, code, needle, tmp_path, run_fetch):
    log = tmp_path / "termination-log"
    log.write_text("")
    args = [a.replace("{tmp}", str(tmp_path / "m")) for a in args]
    res = run_fetch(*args, env={"KUBELLAMA_TERMINATION_LOG": str(log)})
    assert res.returncode == code, res.stderr
    assert needle in res.stderr and needle in log.read_text()


def test_checksum_and_not_gguf_exit_codes(model_server, tiny_bytes, tmp_path, run_fetch):
    url = model_server.add("/tiny.gguf", tiny_bytes)
    res = run_fetch("--url", url, "--dest", str(tmp_path), "--sha256", "0" * 64)
    assert res.returncode == 7 and "0" * 64 in res.stderr
    url = model_server.add("/page.gguf", b"<html>sign in</html>")
    assert run_fetch("--url", url, "--dest", str(tmp_path)).returncode == 8


def test_termination_log_is_not_created_when_absent(model_server, tmp_path, run_fetch):
    log = tmp_path / "absent-log"
    res = run_fetch("--url", model_server.url("/missing.gguf"), "--dest", str(tmp_path),
                    env={"KUBELLAMA_TERMINATION_LOG": str(log)})
    assert res.returncode == 3 and not log.exists()


def test_concurrent_fetchers_share_one_download(model_server, tiny_bytes, tiny_sha, tmp_path):
    """Two replicas on one ReadWriteMany volume: one downloads under the lock, the other waits and reuses it."""
    import time

    url = model_server.add("/tiny.gguf", tiny_bytes, rate=250_000)  # ~2.3 s download
    dest = tmp_path / "shared"
    cmd = [sys.executable, "-m", "kubellama_server.fetch", "--url", url, "--dest", str(dest), "--sha256", tiny_sha]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    deadline = time.monotonic() + 30
    while not model_server.requests_for("/tiny.gguf", "GET"):  # the first one is downloading ...
        assert time.monotonic() < deadline and procs[0].poll() is None
        time.sleep(0.02)
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # ... now
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert {o[0].strip() for o in outs} == {str(dest / "tiny.gguf")}
    assert (dest / "tiny.gguf").read_bytes() == tiny_bytes
    gets = model_server.requests_for("/tiny.gguf", "GET")
    assert len(gets) == 1, "the second fetcher must reuse the first one's download"
    kinds = [[e["event"] for e in _events(o[1])] for o in outs]
    assert kinds[0][0] == "start" and kinds[1][:2] == ["waiting", "cached"], kinds


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("kubellama-fetch")
    exe = str(script) if script.exists() else shutil.which("kubellama-fetch")
    assert exe, "kubellama-fetch is not installed: run `make install`"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--hf-revision" in res.stdout and "8 not a GGUF" in res.stdout


def test_killed_fetch_resumes_in_the_next_container(model_server, tiny_bytes, tiny_sha, tmp_path, run_fetch):
    """An init container killed mid-download (pod deleted, node lost) resumes on its next start."""
    import signal
    import time

    url = model_server.add("/tiny.gguf", tiny_bytes, rate=200_000)
    part = tmp_path / ".tiny.gguf.part"
    proc = subprocess.Popen([sys.executable, "-m", "kubellama_server.fetch", "--url", url, "--dest", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 100_000):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    have = part.stat().st_size
    assert 0 < have < len(tiny_bytes)

    model_server.set("/tiny.gguf")  # full speed now
    res = run_fetch("--url", url, "--dest", str(tmp_path), "--sha256", tiny_sha)
    assert res.returncode == 0, res.stderr
    start = [e for e in _events(res.stderr) if e["event"] == "start"]
    assert start[0]["resumed_from"] == have
    last = model_server.requests_for("/tiny.gguf", "GET")[-1]
    assert last.headers["range"] == f"bytes={have}-" and last.sent == len(tiny_bytes) - have
    assert (tmp_path / "tiny.gguf").read_bytes() == tiny_bytes


def test_success_leaves_a_json_summary_as_termination_message(model_server, tiny_bytes, tiny_sha, tmp_path,
                                                             run_fetch):
    """The operator reads the model size from the init container's termination message."""
    model_server.add("/m/tiny v2.gguf", tiny_bytes)
    url = model_server.url("/m/tiny%20v2.gguf")
    log = tmp_path / "termination-log"
    log.write_text("")
    res = run_fetch("--url", url, "--dest", str(tmp_path / "models"), env={"KUBELLAMA_TERMINATION_LOG": str(log)})
    assert res.returncode == 0, res.stderr
    # the file name is the URL path's last segment as written, as the operator computes it for -m
    import posixpath
    from urllib.parse import urlparse

    expected = tmp_path / "models" / posixpath.basename(urlparse(url).path)
    assert res.stdout.strip() == str(expected) and expected.name == "tiny%20v2.gguf"
    summary = json.loads(log.read_text())
    assert summary["path"] == str(expected) and summary["size"] == len(tiny_bytes)
    assert summary["sha256"] == tiny_sha and summary["source"] == url


def test_hf_repo_with_a_quant_picks_the_file(hf_hub, tiny_bytes, tmp_path, run_fetch):
    for name in ("tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "mmproj-tiny-f16.gguf"):
        hf_hub.add_hub_file("kubellama/tiny-GGUF", name, tiny_bytes)
    res = run_fetch("--hf-repo", "kubellama/tiny-GGUF:Q8_0", "--dest", str(tmp_path), "--progress", "none")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "tiny-Q8_0.gguf") and "picked tiny-Q8_0.gguf" in res.stderr
    res = run_fetch("-hf", "kubellama/tiny-GGUF:Q8_0", "--hf-file", "tiny-Q8_0.gguf", "--dest", str(tmp_path))
    assert res.returncode == 2 and "not both" in res.stderr
