"""`spec.server.extraArgs` read with kubellama-server's own parser: managed and forbidden settings are refused in
any spelling argparse accepts, unknown flags and bad values become a message instead of a crash-looping pod."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubellama_operator import extraargs
from kubellama_operator.extraargs import FORBIDDEN_FLAGS, MANAGED_FLAGS
from kubellama_operator.serverargs import server_args
from kubellama_operator.spec import parse, problems, resolve_model

server_cli = pytest.importorskip("kubellama_server.cli")

# (extra args, what the message must name)
REFUSED = {
    "abbreviated long flag with a value": (["--hos=0.0.0.0"], "--hos=0.0.0.0"),
    "abbreviated long flag": (["--hos", "0.0.0.0"], "--hos"),
    "attached short value": (["-m/models/other.gguf"], "-m/--model"),
    "abbreviated slot save path": (["--slot-save=/tmp/x"], "--slot-save=/tmp/x"),
    "static files": (["--path", "/"], "--path"),
    "static files, = form": (["--path=/var/run/secrets"], "--path"),
    "api key in clear": (["--api-key", "k"], "--api-key"),
    "api key file": (["--api-key-file=/etc/passwd"], "--api-key-file"),
    "tls key": (["--ssl-key-file", "/k.pem", "--ssl-cert-file", "/c.pem"], "--ssl-key-file"),
    "unknown flag": (["--bogus"], "--bogus"),
    "a flag the server does not have": (["--no-such-flag", "0.8"], "--no-such-flag 0.8"),
    "bad number": (["-c", "abc"], "-c/--ctx-size"),
    "bad choice": (["--pooling", "max"], "--pooling"),
    "missing value": (["--alias"], "-a/--alias"),
    "stray value": (["-tb", "4", "extra"], "extra"),
    "help exits": (["--help"], "--help"),
    "shutdown timeout": (["--shutdown-timeout=900"], "--shutdown-timeout"),
    "slot persistence": (["--slot-persist"], "--slot-persist"),
    "system prompt file": (["-spf", "/etc/passwd"], "-spf/--system-prompt-file"),
    "port": (["--port", "9000"], "--port"),
    "model download": (["-hf", "org/repo"], "--hf-repo"),
    "adapter": (["--lora=/x.gguf"], "--lora"),
}

ACCEPTED = [[], ["-tb", "4"], ["--threads-batch=4"], ["-ngl", "3"], ["-n", "-1"], ["--lora-base", "/models/m.gguf"],
            ["--grp-attn-n", "4", "--grp-attn-w", "2048"], ["--mlock", "-v"], ["--chat-template-kwargs",
                                                                              '{"enable_thinking": false}']]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(name):
    args, named = REFUSED[name]
    found = extraargs.problems(args)
    assert found and named in found[0], found
    assert all(f.startswith("spec.server.extraArgs ") for f in found)


@pytest.mark.parametrize("args", ACCEPTED, ids=str)
def test_accepted(args):
    assert extraargs.problems(args) == []


def test_every_refused_flag_is_a_server_flag():
    """A flag renamed in the server must not silently leave the lists (the parser maps them to settings)."""
    options = set(extraargs.parser()._option_string_actions)
    assert set(MANAGED_FLAGS) | set(FORBIDDEN_FLAGS) <= options


def test_every_spelling_of_a_managed_setting_is_refused():
    """Each alias of a managed or forbidden setting, not only the names in the lists."""
    managed = {server_cli_flag.dest for server_cli_flag in server_cli.FLAGS
               if set(server_cli_flag.names) & (set(MANAGED_FLAGS) | set(FORBIDDEN_FLAGS))}
    for flag in server_cli.FLAGS:
        if flag.dest not in managed:
            continue
        for name in flag.names:
            args = [name] if flag.kind == "bool" else [name, "1"]
            assert extraargs.problems(args), args


def test_the_server_would_take_what_is_refused():
    """Why the check exists: a managed flag's attached value, or an `=` form, overrides what the operator set."""
    spec = parse({"model": {"url": "https://m.test/a.gguf"}})
    managed = server_args(spec, resolve_model(spec))
    settings, _ = server_cli.parse_settings(managed + ["--host=127.0.0.2", "-m/models/other.gguf"], environ={})
    assert (settings.host, settings.model) == ("127.0.0.2", "/models/other.gguf")
    assert extraargs.problems(["--host=127.0.0.2", "-m/models/other.gguf"]) == [
        "spec.server.extraArgs may not set --host: the operator manages it (from the spec); remove it",
        "spec.server.extraArgs may not set -m/--model: the operator manages it (from the spec); remove it"]


def test_spec_problems_include_the_extra_args():
    spec = parse({"model": {"url": "https://m.test/a.gguf"}, "server": {"extraArgs": ["--hos=0.0.0.0"]}})
    assert any("--hos=0.0.0.0" in p for p in problems(spec))


def test_help_prints_nothing(capsys):
    assert extraargs.problems(["--help"]) and extraargs.problems(["--version"])
    assert capsys.readouterr() == ("", "")


def test_the_check_loads_neither_llama_cpp_nor_the_web_stack():
    """The operator image installs the project without the server's dependencies."""
    code = ("import sys; import kubellama_operator.handlers; from kubellama_operator import extraargs; "
            "assert extraargs.problems(['--bogus']); "
            "print(sorted(m for m in ('llama_cpp', 'fastapi', 'uvicorn', 'numpy', 'starlette') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
