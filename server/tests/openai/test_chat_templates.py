"""Chat templates: built-ins, the model's template, sandboxing, start-up and per-request errors."""

from __future__ import annotations

import httpx
import pytest

from kubellama_server.cli import NOT_IMPLEMENTED, parse_settings
from kubellama_server.serving.chat_templates import BUILTIN, ChatTemplate, TemplateError, from_cli, resolve

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello"}]
CHATML = "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"
GEMMA = "<bos><start_of_turn>user\nYou are terse.\n\nSay hello<end_of_turn>\n<start_of_turn>model\n"


def render(name: str, messages=MSGS, **kw) -> str:
    return ChatTemplate(BUILTIN[name], name).render(messages, bos_token="<s>", eos_token="</s>", **kw)


def test_builtin_templates_render_the_expected_prompts():
    conv = MSGS + [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Again"}]
    assert render("chatml") == CHATML
    assert render("llama3") == ("<s><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
                                "<|start_header_id|>user<|end_header_id|>\n\nSay hello<|eot_id|>"
                                "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render("llama2", conv) == "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nSay hello [/INST] Hi </s><s>[INST] Again [/INST]"
    assert render("gemma", conv) == ("<s><start_of_turn>user\nYou are terse.\n\nSay hello<end_of_turn>\n"
                                     "<start_of_turn>model\nHi<end_of_turn>\n<start_of_turn>user\nAgain<end_of_turn>\n"
                                     "<start_of_turn>model\n")
    assert render("mistral", conv) == "<s>[INST] You are terse.\n\nSay hello [/INST]Hi</s>[INST] Again [/INST]"
    assert render("phi3") == "<|system|>\nYou are terse.<|end|>\n<|user|>\nSay hello<|end|>\n<|assistant|>\n"
    assert render("zephyr") == "<|system|>\nYou are terse.</s>\n<|user|>\nSay hello</s>\n<|assistant|>\n"
    assert render("chatml", add_generation_prompt=False) == CHATML[: -len("<|im_start|>assistant\n")]


def test_template_resolution_order():
    assert resolve("llama3", "{{ x }}", "llama").name == "llama3"
    assert resolve("", BUILTIN["phi3"], "llama").name == "model"
    assert resolve("", None, "gemma3").name == "gemma"
    assert resolve("", None, "llama").name == "chatml"
    assert resolve("", "{% broken", "llama").name == "chatml"  # a broken model template falls back


def test_sandbox_and_raise_exception():
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}", "custom")
    with pytest.raises(TemplateError, match="unsafe"):
        evil.render(MSGS, bos_token="", eos_token="")
    with pytest.raises(TemplateError, match="alternate"):
        render("gemma", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(TemplateError, match="does not compile"):
        from_cli("{% for %}")
    with pytest.raises(TemplateError, match="neither a built-in"):
        from_cli("chatml2")


def test_cli_chat_template_errors_at_start_up(tiny_model, capsys):
    base = ["-m", str(tiny_model)]
    settings, _ = parse_settings(base + ["--chat-template", "gemma"], environ={})
    assert settings.chat_template == "gemma"
    for bad, msg in (["--chat-template", "nonsense"], "neither a built-in"), (["--chat-template", "{{ raise_exception('no') }}"], "no"):
        with pytest.raises(SystemExit) as exc:
            parse_settings(base + bad, environ={})
        assert exc.value.code == 2
        assert msg in capsys.readouterr().err
    for name in ("chat_template", "api_key", "api_key_file", "system_prompt_file", "path"):
        assert name not in NOT_IMPLEMENTED


def test_tiny_model_template_token_for_token(live_server):
    srv = live_server("-np", "2", "-c", "1024")
    assert srv.app.state.chat.formatter.template.name == "model"  # the GGUF's own ChatML template
    r = httpx.post(srv.url + "/apply-template", json={"messages": MSGS})
    assert r.status_code == 200 and r.json()["prompt"] == CHATML
    expected = httpx.post(srv.url + "/tokenize", json={"content": CHATML, "add_special": True}).json()["tokens"]
    chat = httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSGS, "max_tokens": 12, "temperature": 0}, timeout=60).json()
    assert chat["usage"]["prompt_tokens"] == len(expected)
    # the same tokens as a raw prompt give the same greedy continuation
    raw = httpx.post(srv.url + "/completion", json={"prompt": expected, "n_predict": 12, "temperature": 0}, timeout=60).json()
    assert raw["content"] == chat["choices"][0]["message"]["content"]


@pytest.mark.parametrize("flags", [(), ("--chat-template", "gemma")])
def test_gemma_template_token_for_token(live_server, gemma_model, flags):
    srv = live_server("-np", "1", "-c", "1024", *flags, model=gemma_model)
    assert srv.app.state.chat.formatter.template.name == "gemma"
    assert httpx.post(srv.url + "/apply-template", json={"messages": MSGS}).json()["prompt"] == GEMMA
    tok = lambda text: httpx.post(srv.url + "/tokenize", json={"content": text}).json()["tokens"]  # noqa: E731
    ids = tok(GEMMA)
    (bos,), (sot,), (eot,) = tok("<bos>"), tok("<start_of_turn>"), tok("<end_of_turn>")  # special tokens: one each
    assert ids[:2] == [bos, sot] and ids.count(bos) == 1 and ids.count(sot) == 2 and ids.count(eot) == 1
    assert ids[-3] == sot and ids[2:] == tok("user\n") + tok("You are terse.\n\nSay hello") + [eot] + tok("\n") + [sot] + tok("model\n")
    chat = httpx.post(srv.url + "/v1/chat/completions", json={"messages": MSGS, "max_tokens": 8, "temperature": 0}, timeout=60).json()
    assert chat["usage"]["prompt_tokens"] == len(ids)  # one BOS, not two
    raw = httpx.post(srv.url + "/completion", json={"prompt": ids, "n_predict": 8, "temperature": 0}, timeout=60).json()
    assert raw["content"] == chat["choices"][0]["message"]["content"]


def test_template_render_failure_is_400(live_server):
    srv = live_server("--chat-template", "gemma")
    r = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error" and "alternate" in err["message"]


def test_a_final_assistant_message_is_continued(oai_server):
    """Prefill (as llama.cpp and Anthropic's API): the reply continues the last assistant message."""
    import httpx

    messages = [{"role": "user", "content": "Give me JSON"}, {"role": "assistant", "content": '{"answer": '}]
    prompt = httpx.post(oai_server.url + "/apply-template", json={"messages": messages}).json()["prompt"]
    assert prompt.endswith('<|im_start|>assistant\n{"answer": ')  # as written: no end of turn, no new turn
    r = httpx.post(oai_server.url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] > 0


def test_prefill_cuts_are_independent_of_the_text(oai_server):
    import httpx

    def prompt(content):
        msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": content}]
        return httpx.post(oai_server.url + "/apply-template", json={"messages": msgs}).json()["prompt"]

    for text in ("<", "m", "end", "Hi", "<|im_end|>"):  # pieces of the end of turn, or of earlier turns
        assert prompt(text).endswith("<|im_start|>assistant\n" + text), (text, prompt(text))
    assert prompt("   ").endswith("<|im_end|>\n<|im_start|>assistant\n")  # whitespace only: a normal new turn
