"""The llama.cpp-compatible command line and LLAMA_ARG_* environment variables."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubellama_server.cli import parse_settings, unimplemented


def test_defaults_match_llama_cpp_server():
    s, given = parse_settings(["-m", "x.gguf"], environ={})
    assert (s.host, s.port, s.ctx_size, s.parallel, s.batch_size, s.ubatch_size, s.n_predict, s.timeout) == (
        "127.0.0.1", 8080, 512, 1, 2048, 512, -1, 600
    )
    assert s.n_gpu_layers == 0 and s.cont_batching and not s.metrics and not s.embedding
    assert given == ["model"]


def test_short_and_long_forms():
    s, _ = parse_settings(
        ["-m", "m.gguf", "-c", "4096", "-np", "4", "-b", "256", "-ub", "128", "-t", "3", "-tb", "5", "-ngl", "99",
         "-mg", "1", "-ts", "3,2", "-a", "gemma", "-n", "64", "-to", "30", "--api-key", "k1", "--api-key", "k2",
         "--metrics", "--slots-endpoint-disable", "--log-format", "text", "-mu", "http://x/m.gguf"],
        environ={},
    )
    assert (s.ctx_size, s.parallel, s.batch_size, s.ubatch_size, s.threads, s.threads_batch) == (4096, 4, 256, 128, 3, 5)
    assert (s.n_gpu_layers, s.main_gpu, s.tensor_split, s.alias, s.n_predict, s.timeout) == (99, 1, [3.0, 2.0], "gemma", 64, 30)
    assert s.api_key == ["k1", "k2"] and s.metrics and s.slots_endpoint_disable and s.log_format == "text"
    assert s.model_url == "http://x/m.gguf"


def test_environment_variables_and_command_line_precedence():
    env = {"LLAMA_ARG_MODEL": "env.gguf", "LLAMA_ARG_CTX_SIZE": "1024", "LLAMA_ARG_N_PARALLEL": "3",
           "LLAMA_ARG_ENDPOINT_METRICS": "1", "LLAMA_ARG_SLOT_SAVE_PATH": "/slots", "LLAMA_ARG_HOST": "0.0.0.0"}
    s, given = parse_settings([], environ=env)
    assert (s.model, s.ctx_size, s.parallel, s.metrics, s.slot_save_path, s.host) == ("env.gguf", 1024, 3, True, "/slots", "0.0.0.0")
    s, _ = parse_settings(["-c", "2048"], environ=env)
    assert s.ctx_size == 2048  # the command line wins
    assert "ctx_size" in given


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["-m", "x", "--bogus"], {}, "unrecognized arguments: --bogus"),
        (["-m", "x", "--hos=0.0.0.0"], {}, "unrecognized arguments: --hos=0.0.0.0"),  # no abbreviations
        (["-m", "x", "-c", "big"], {}, "invalid value 'big'"),
        (["-m", "x", "-np", "0"], {}, "--parallel must be >= 1"),
        (["-m", "x", "--log-format", "xml"], {}, "expected one of json, text"),
        (["-m", "x"], {"LLAMA_ARG_CTX_SIZE": "lots"}, "env LLAMA_ARG_CTX_SIZE"),
        (["-m", "x"], {"LLAMA_ARG_ENDPOINT_METRICS": "maybe"}, "expected true/false"),
        ([], {}, "no model"),
        (["-m", "x", "--mmproj", "/nowhere/mmproj.gguf"], {}, "--mmproj /nowhere/mmproj.gguf: no such file"),
        (["-m", "x", "--chat-template-kwargs", "{nope"], {}, "--chat-template-kwargs is not valid JSON"),
        (["-m", "x", "--chat-template-kwargs", '{"tools": 1}'], {}, "may not set tools"),
        (["-m", "x", "--reasoning-budget", "500"], {}, "--reasoning-budget must be -1"),
        (["-m", "x", "--embedding", "--lora", "a.gguf", "-np", "3"], {}, "needs --parallel 1, 2, 4, 8"),
        (["-m", "x", "--reasoning-format", "r1"], {}, "expected one of auto, deepseek, none"),
        (["-m", "x", "-mm", __file__, "--grp-attn-n", "4"], {}, "--mmproj cannot be combined with --grp-attn-n"),
    ],
)
def test_usage_errors_exit_2(argv, env, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_settings(argv, environ=env)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unimplemented_flags_are_named():
    s, given = parse_settings(["-m", "x", "--lora-base", "b.gguf", "--grp-attn-n", "4"], environ={})
    names = unimplemented(given, s)
    assert any(n.startswith("lora_base") for n in names), names
    assert not any(n.startswith("grp_attn") for n in names)  # self-extend is implemented
    s, given = parse_settings(["-m", "x", "--mmproj", ""], environ={})
    assert unimplemented(given, s) == []  # the default value changes nothing


@pytest.mark.parametrize("argv", [["--grp-attn-n", "4", "--grp-attn-w", "30"], ["--grp-attn-n", "0"],
                                  ["--grp-attn-n", "2", "--grp-attn-w", "0"]])
def test_bad_self_extend_settings_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_settings(["-m", "x", *argv], environ={})
    assert exc.value.code == 2
    assert "--grp-attn" in capsys.readouterr().err


def test_console_script_help_and_usage_error():
    exe = [sys.executable, "-m", "kubellama_server"]
    out = subprocess.run(exe + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--ctx-size" in out.stdout and "LLAMA_ARG_CTX_SIZE" in out.stdout
    bad = subprocess.run(exe + ["-m", "x", "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_default_threads_follow_the_cgroup_cpu_quota(tmp_path):
    from kubellama_server.settings import available_cpus

    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a pod limited to 1.5 CPUs
    assert available_cpus(str(cpu_max)) == min(2, len(__import__("os").sched_getaffinity(0)))
    cpu_max.write_text("50000 100000\n")
    assert available_cpus(str(cpu_max)) == 1
    cpu_max.write_text("max 100000\n")
    assert available_cpus(str(cpu_max)) == len(__import__("os").sched_getaffinity(0))
    assert available_cpus(str(tmp_path / "missing")) >= 1
