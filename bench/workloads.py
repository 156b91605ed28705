"""The fixed workloads: prompts, n_predict and seeds are the same for every peer."""
from __future__ import annotations

import random
from dataclasses import dataclass

from bench.loadgen import ClientPlan, RequestSpec, Workload

SHORT_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator keeps food cold, step by step.",
    "Describe a walk through a busy market in a coastal town at dawn.",
    "List the steps to plan a vegetable garden for a small backyard.",
    "Tell the history of the bicycle in a few paragraphs.",
    "Write a letter from a traveller to a friend describing the mountains.",
    "Explain why the sky is blue to a curious ten year old.",
    "Describe how bread is baked in a traditional village bakery.",
]
QUESTIONS = [
    "How many vacation days does a new employee get?",
    "Who approves travel expenses above the limit?",
    "What should I do when my laptop is stolen?",
    "When are performance reviews held?",
    "Can I work remotely from another country?",
    "How do I request a new software licence?",
    "What is the policy on overtime pay?",
    "Where do I report a safety incident?",
]
_WORDS = ("policy employee manager office travel expense approval report team project "
          "holiday schedule security laptop review salary benefit training meeting client "
          "contract budget request process department safety document access system "
          "support customer quality deadline service record payment insurance").split()


def handbook(n_words: int = 905, seed: int = 7) -> str:
    """A deterministic ~1,000-token 'company handbook' used as the shared system prompt."""
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < n_words:
        k = rng.randint(8, 16)
        words = [rng.choice(_WORDS) for _ in range(k)]
        sentences.append(" ".join(words).capitalize() + ".")
        count += k
    return ("You are the assistant of Example Corp. Answer questions using this handbook.\n\n"
            + " ".join(sentences) + "\n\n")


@dataclass(frozen=True)
class Sizes:
    """Knobs of one benchmark run (a quick run shrinks them)."""

    n_predict: int = 128
    requests_per_client: int = 1
    prefix_requests_per_client: int = 3
    prefix_n_predict: int = 16
    mixed_n_predict: int = 192
    mixed_arrivals: int = 3


def _streaming(name: str, family: str, clients: int, sizes: Sizes, slots: int = 0) -> Workload:
    plans = []
    for c in range(clients):
        reqs = [RequestSpec(prompt=SHORT_PROMPTS[(c + i) % len(SHORT_PROMPTS)], n_predict=sizes.n_predict,
                            seed=1000 + 100 * c + i)
                for i in range(sizes.requests_per_client)]
        plans.append(ClientPlan(reqs))
    where = "/v1/chat/completions" if family == "chat" else "/completion (or /v1/completions)"
    return Workload(name, family, plans, slots=slots,
                    description=f"{clients} streaming clients on {where}, n_predict {sizes.n_predict}"
                                + (f", {slots} slot(s)" if slots else ""))


def _prefix(name: str, cached: bool, sizes: Sizes, clients: int = 4) -> Workload:
    system = handbook()
    plans = []
    for c in range(clients):
        reqs = []
        for i in range(sizes.prefix_requests_per_client):
            q = QUESTIONS[(c * sizes.prefix_requests_per_client + i) % len(QUESTIONS)]
            # Without caching every prompt starts differently, so no server can reuse a prefix.
            sys_text = system if cached else f"Request {c}-{i}-{random.Random(c * 97 + i).random():.6f}. " + system
            reqs.append(RequestSpec(prompt=f"Question: {q}\nAnswer:", system=sys_text,
                                    n_predict=sizes.prefix_n_predict, seed=2000 + 10 * c + i,
                                    cache_prompt=cached))
        plans.append(ClientPlan(reqs))
    what = "the same" if cached else "a unique (uncacheable)"
    return Workload(name, "completion", plans, prime=cached,
                    description=f"{clients} clients x {sizes.prefix_requests_per_client} questions after "
                                f"{what} ~1,000-token system prompt, n_predict {sizes.prefix_n_predict}")


def _mixed(sizes: Sizes, gen_clients: int = 3) -> Workload:
    plans = [ClientPlan([RequestSpec(prompt=SHORT_PROMPTS[c], n_predict=sizes.mixed_n_predict,
                                     seed=3000 + c)], group="gen")
             for c in range(gen_clients)]
    long_prompts = [RequestSpec(prompt=f"Document {i}.\n" + handbook(720, seed=100 + i) + "Summarize:",
                                n_predict=16, seed=3100 + i, cache_prompt=False)
                    for i in range(sizes.mixed_arrivals)]
    plans.append(ClientPlan(long_prompts, group="arrival", start_delay=0.5))
    return Workload("mixed", "completion", plans, slots=gen_clients + 1,
                    description=f"{gen_clients} clients generate {sizes.mixed_n_predict} tokens while "
                                f"{sizes.mixed_arrivals} new ~800-token prompts arrive one after another")


def all_workloads(sizes: Sizes) -> list[Workload]:
    return [
        _streaming("completion-1", "completion", 1, sizes),
        _streaming("chat-1", "chat", 1, sizes),
        _streaming("completion-4-np1", "completion", 4, sizes, slots=1),
        _streaming("completion-4", "completion", 4, sizes),
        _streaming("chat-4", "chat", 4, sizes),
        _prefix("shared-prefix", True, sizes),
        _prefix("no-prefix-cache", False, sizes),
        _mixed(sizes),
        _streaming("completion-8", "completion", 8, sizes),
        _streaming("chat-8", "chat", 8, sizes),
    ]


QUICK = Sizes(n_predict=64, prefix_requests_per_client=2, mixed_n_predict=96, mixed_arrivals=2)
FULL = Sizes()
