"""What the e2e tests ask of one running kubellama-server, given its base URL.

The cluster tests call these through `kubectl port-forward`; test_e2e_assets.py calls the
same functions against a server started on loopback, so the checks themselves are proven
on every `make test` even where no cluster exists.
"""

from __future__ import annotations

import openai
from prometheus_client.parser import text_string_to_metric_families

from e2e_support import http, http_json

ALIAS = "kubellama-tiny"
SLOT_FILE = "e2e-slot0.bin"
PROMPT = "the server model token slot cache " * 6
COMPLETION = {"prompt": PROMPT, "n_predict": 4, "id_slot": 0, "cache_prompt": True, "temperature": 0}


def check_chat(base_url: str, model: str = ALIAS) -> None:
    """Chat completion and streaming with the official `openai` client."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="e2e", timeout=120, max_retries=1)
    assert model in [m.id for m in client.models.list().data]
    messages = [{"role": "user", "content": "hello llama, say something"}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0
    assert 1 <= reply.usage.completion_tokens <= 8

    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=8,
                                                 temperature=0, stream=True))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert deltas, f"the stream carried no content: {chunks}"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")


def check_metrics(base_url: str) -> dict[str, float]:
    """/metrics has the llama.cpp series (with traffic counted) and kubellama's own."""
    status, text = http("GET", f"{base_url}/metrics")
    assert status == 200, f"/metrics -> HTTP {status}: {text[:300]}"
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    llamacpp = sorted(name for name in samples if name.startswith("llamacpp:"))
    for name in ("llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total",
                 "llamacpp:kv_cache_usage_ratio", "llamacpp:requests_processing"):
        assert name in llamacpp, f"{name} missing from /metrics; llamacpp series: {llamacpp}"
    assert samples["llamacpp:prompt_tokens_total"] > 0, "requests were served but no prompt tokens counted"
    assert samples["llamacpp:tokens_predicted_total"] > 0
    assert any(name.startswith("kubellama_requests_total") for name in samples)
    assert any(name.startswith("kubellama_time_to_first_token_seconds_bucket") for name in samples)
    return samples


def prime_and_save_slot(base_url: str) -> dict:
    """Fill slot 0's prompt cache and save it to SLOT_FILE; returns the save's answer."""
    prime_slot(base_url)
    saved = http_json("POST", f"{base_url}/slots/0?action=save", {"filename": SLOT_FILE})
    assert saved["n_saved"] > 0, saved
    return saved


def prime_slot(base_url: str) -> None:
    """Put the prompt in slot 0's cache (what a warm restart must carry over)."""
    http_json("POST", f"{base_url}/completion", COMPLETION)


def check_prompt_cached(base_url: str) -> dict:
    """The prompt again on slot 0: its cached prefix is reused, not evaluated again."""
    n_prompt = len(http_json("POST", f"{base_url}/tokenize", {"content": PROMPT})["tokens"])
    again = http_json("POST", f"{base_url}/completion", {**COMPLETION, "n_predict": 1})
    assert again["tokens_cached"] > 0, f"the prompt cache was not used: {again}"
    prompt_n = again.get("timings", {}).get("prompt_n")
    if prompt_n is not None:  # only the uncached tail of the prompt was evaluated again
        assert prompt_n < n_prompt, (prompt_n, n_prompt)
    return again


def restore_slot_and_check(base_url: str, saved: dict) -> dict:
    """On a fresh server: restore SLOT_FILE into slot 0, then the same prompt hits the cache."""
    restored = http_json("POST", f"{base_url}/slots/0?action=restore", {"filename": SLOT_FILE})
    assert restored["n_restored"] == saved["n_saved"], (saved, restored)
    return check_prompt_cached(base_url)


def cold_cache(base_url: str, slot: int = 1) -> int:
    """tokens_cached for the prompt in a slot that never saw it (the control: 0)."""
    answer = http_json("POST", f"{base_url}/completion", {**COMPLETION, "n_predict": 1, "id_slot": slot})
    return answer["tokens_cached"]


def context_size(base_url: str) -> int:
    return int(http_json("GET", f"{base_url}/props")["default_generation_settings"]["n_ctx"])
