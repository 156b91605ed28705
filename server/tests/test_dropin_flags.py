"""llama.cpp's common sampling flags: server-wide request defaults, reported by /props (issue 16)."""

from __future__ import annotations

import json

import httpx
import pytest

from kubellama_server.cli import parse_settings
from kubellama_server.engine.sampler_names import default_params, logit_bias_flag, sampler_chars, sampler_names

# a llama-server command line with every common sampling flag (llama.cpp's own spellings)
LLAMA_CPP_ARGS = [
    "--temp", "0.7", "-s", "42", "--top-k", "30", "--top-p", "0.9", "--min-p", "0.1", "--typical", "0.95",
    "--repeat-penalty", "1.2", "--repeat-last-n", "32", "--presence-penalty", "0.3", "--frequency-penalty", "0.4",
    "--dynatemp-range", "0.2", "--dynatemp-exp", "1.5", "--mirostat", "0", "--mirostat-lr", "0.2",
    "--mirostat-ent", "4.0", "--samplers", "penalties;dry;top_k;typ_p;top_p;min_p;xtc;temperature",
    "--dry-multiplier", "0.8", "--dry-base", "2.0", "--dry-allowed-length", "3", "--dry-penalty-last-n", "128",
    "--dry-sequence-breaker", "\n", "--dry-sequence-breaker", "###", "--xtc-probability", "0.5",
    "--xtc-threshold", "0.2", "--top-nsigma", "1.5", "--ignore-eos", "-l", "5+1.5", "-l", "7-inf",
]


def test_every_sampling_flag_parses_into_request_defaults():
    s, given = parse_settings(["-m", "x.gguf", *LLAMA_CPP_ARGS], environ={})
    p = default_params(s)
    assert (p.temperature, p.seed, p.top_k, p.top_p, p.min_p, p.typical_p) == (0.7, 42, 30, 0.9, 0.1, 0.95)
    assert (p.repeat_penalty, p.repeat_last_n, p.presence_penalty, p.frequency_penalty) == (1.2, 32, 0.3, 0.4)
    assert (p.dynatemp_range, p.dynatemp_exponent, p.mirostat, p.mirostat_eta, p.mirostat_tau) == (0.2, 1.5, 0, 0.2, 4.0)
    assert p.samplers == ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
    assert (p.dry_multiplier, p.dry_base, p.dry_allowed_length, p.dry_penalty_last_n) == (0.8, 2.0, 3, 128)
    assert p.dry_sequence_breakers == ["\n", "###"]
    assert (p.xtc_probability, p.xtc_threshold, p.top_n_sigma, p.ignore_eos) == (0.5, 0.2, 1.5, True)
    assert p.logit_bias == [(5, 1.5), (7, False)]  # -inf bans the token, as `false` in a request
    assert "temp" in given and "logit_bias" in given


def test_sampler_names_letters_and_logit_bias_forms():
    assert sampler_names(["Top-K", "nucleus", "typical_p", "temp", "minp", "top_n_sigma"], "x") == \
        ["top_k", "top_p", "typ_p", "temperature", "min_p", "top_n_sigma"]
    assert sampler_chars("edskypmxt", "x") == ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p",
                                               "min_p", "xtc", "temperature"]
    assert logit_bias_flag("15043+1") == (15043, 1.0) and logit_bias_flag("15043-1") == (15043, -1.0)
    assert logit_bias_flag("15043-inf") == (15043, False)
    for bad in ("15043", "x+1", "15043*1", "15043+nan", "15043+inf"):
        with pytest.raises(ValueError, match="--logit-bias"):
            logit_bias_flag(bad)


def test_environment_variables_set_sampling_defaults():
    env = {"LLAMA_ARG_TEMPERATURE": "0.3", "LLAMA_ARG_TOP_K": "5", "LLAMA_ARG_SEED": "9",
           "LLAMA_ARG_DRY_MULTIPLIER": "0.5", "LLAMA_ARG_IGNORE_EOS": "1", "LLAMA_ARG_SAMPLING_SEQ": "kt"}
    p = default_params(parse_settings(["-m", "x"], environ=env)[0])
    assert (p.temperature, p.top_k, p.seed, p.dry_multiplier, p.ignore_eos) == (0.3, 5, 9, 0.5, True)
    assert p.samplers == ["top_k", "temperature"]
    assert default_params(parse_settings(["-m", "x", "--temp", "0.1"], environ=env)[0]).temperature == 0.1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--temp", "hot"], "invalid value 'hot' for argument --temp"),
        (["--repeat-last-n", "-1"], "--repeat-last-n must be >= 0"),
        (["--repeat-penalty", "0"], "--repeat-penalty must be finite and greater than 0"),
        (["--mirostat", "3"], "--mirostat must be 0, 1 or 2"),
        (["--samplers", "top_k;bogus"], "--samplers: unknown sampler name 'bogus'"),
        (["--samplers", "top_k;infill"], "the infill sampler ('infill') is not supported"),
        (["--sampling-seq", "kq"], "--sampling-seq: unknown sampler letter 'q'"),
        (["-l", "15043"], "--logit-bias '15043'"),
        (["--grammar-file", "/nowhere/g.gbnf"], "--grammar-file /nowhere/g.gbnf"),
        (["-j", "{nope"], "--json-schema is not valid JSON"),
        (["-j", "{}", "--grammar", "root ::= \"a\""], "give only one of --grammar"),
        (["--dry-penalty-last-n", "-1"], "--dry-penalty-last-n must be >= 0"),
        (["--top-p", "nan"], "--top-p must be a finite number"),
    ],
)
def test_bad_sampling_flags_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_settings(["-m", "x", *argv], environ={})
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_props_reports_the_sampling_flags(live_server):
    srv = live_server(*LLAMA_CPP_ARGS)
    props = httpx.get(srv.url + "/props").json()
    for view in (props["default_generation_settings"], props["default_generation_settings"]["params"]):
        assert view["temperature"] == pytest.approx(0.7) and view["seed"] == 42 and view["top_k"] == 30
        assert (view["top_p"], view["min_p"], view["typical_p"]) == pytest.approx((0.9, 0.1, 0.95))
        assert (view["repeat_penalty"], view["repeat_last_n"]) == (pytest.approx(1.2), 32)
        assert (view["presence_penalty"], view["frequency_penalty"]) == pytest.approx((0.3, 0.4))
        assert (view["dynatemp_range"], view["dynatemp_exponent"]) == pytest.approx((0.2, 1.5))
        assert (view["mirostat"], view["mirostat_eta"], view["mirostat_tau"]) == (0, pytest.approx(0.2), pytest.approx(4.0))
        assert view["samplers"] == ["penalties", "dry", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
        assert (view["dry_multiplier"], view["dry_base"], view["dry_allowed_length"], view["dry_penalty_last_n"]) == (
            pytest.approx(0.8), pytest.approx(2.0), 3, 128)
        assert view["dry_sequence_breakers"] == ["\n", "###"]
        assert (view["xtc_probability"], view["xtc_threshold"], view["top_n_sigma"]) == pytest.approx((0.5, 0.2, 1.5))
        assert view["ignore_eos"] is True
        assert view["logit_bias"][:2] == [[5, 1.5], [7, False]]
    # the defaults apply to a request: same seed, same output; a request's own value wins
    body = {"prompt": "hello world", "n_predict": 8}
    a = httpx.post(srv.url + "/completion", json=body, timeout=60).json()
    assert a["generation_settings"]["seed"] == 42 and a["generation_settings"]["top_k"] == 30
    assert httpx.post(srv.url + "/completion", json=body, timeout=60).json()["content"] == a["content"]
    b = httpx.post(srv.url + "/completion", json={**body, "top_k": 3, "seed": 1}, timeout=60).json()
    assert b["generation_settings"]["top_k"] == 3 and b["generation_settings"]["seed"] == 1
    assert 7 not in a["tokens"] and a["tokens_predicted"] == 8  # -l 7-inf bans token 7; --ignore-eos


def test_grammar_and_json_schema_flags_constrain_requests_without_their_own(live_server, tmp_path):
    gfile = tmp_path / "yesno.gbnf"
    gfile.write_text('root ::= "yes" | "no"\n')
    srv = live_server("--grammar-file", str(gfile))
    out = httpx.post(srv.url + "/completion", json={"prompt": "hello", "n_predict": 8, "seed": 3}, timeout=60).json()
    assert out["content"] in ("yes", "no")
    own = httpx.post(srv.url + "/completion", json={"prompt": "hello", "n_predict": 8, "grammar": 'root ::= "maybe"'},
                     timeout=60).json()
    assert own["content"] == "maybe"  # a request's grammar replaces the server's
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    srv2 = live_server("-j", json.dumps(schema))
    text = httpx.post(srv2.url + "/completion", json={"prompt": "x", "n_predict": 24, "temperature": 0}, timeout=60).json()["content"]
    data = json.loads(text) if text.endswith("}") else None
    assert data is None or isinstance(data["n"], int)
    assert text.startswith('{')
