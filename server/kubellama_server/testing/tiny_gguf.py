"""Build a tiny llama-architecture GGUF model with a working SentencePiece tokenizer.

Random weights, two layers, a ~400-token vocabulary with byte fallback (any text
tokenizes), ChatML control tokens, FIM tokens and a ChatML chat template. Loads in
milliseconds, so most tests use it; its output is gibberish but deterministic for
a fixed seed.

With `reranker=True` it is a tiny Qwen3-style reranker instead: the qwen3
architecture (llama plus per-head Q/K norms; llama.cpp's llama architecture has no
classifier head), a `cls.output` head over two labels ("yes", "no": with pooling
RANK llama.cpp softmaxes them, so the score is P(yes)) and a rerank prompt
template in `tokenizer.chat_template.rerank`, as convert_hf_to_gguf.py writes
for Qwen3-Reranker.

    python -m kubellama_server.testing.tiny_gguf OUT.gguf
"""

from __future__ import annotations

import os
import string
import sys
from pathlib import Path

import numpy as np

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The rerank prompt (llama.cpp's format_prompt_rerank replaces {query} and {document}).
RERANK_TEMPLATE = (
    "<|im_start|>user\nquery: {query}\ndocument: {document}<|im_end|>\n<|im_start|>assistant\n"
)

# gguf token types
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6

WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find hello world llama kubernetes "
    "server model token slot cache prompt json true false null"
).split()


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [_UNKNOWN, _CONTROL, _CONTROL]
    for special in ("<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"):
        tokens.append(special)
        types.append(_CONTROL)
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(_BYTE)
    pieces = ["\u2581"] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces += ["\u2581" + c for c in string.ascii_lowercase]
    pieces += ["\u2581" + w for w in WORDS]
    seen = set(tokens)
    for p in pieces:
        if p not in seen:
            seen.add(p)
            tokens.append(p)
            types.append(_NORMAL)
    # SentencePiece merges prefer higher scores: longer pieces score higher.
    scores = [0.0 if t != _NORMAL else float(len(tok)) - 100.0 for tok, t in zip(tokens, types)]
    return tokens, scores, types


def build_tiny_gguf(
    path: str | os.PathLike,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 4096,
    seed: int = 1234,
    fim: bool = True,
    fim_repo: bool = False,
    chat_template: str | None = CHATML_TEMPLATE,
    name: str = "kubellama-tiny",
    split_max_tensors: int = 0,
    reranker: bool = False,
    rerank_template: str | None = RERANK_TEMPLATE,
) -> Path:
    """Write a tiny random llama GGUF to `path`. With `split_max_tensors`, a split model
    instead: `<stem>-00001-of-0000N.gguf`, ... beside `path` (the first one is returned).

    `reranker=True`: a qwen3 reranker (classifier head, labels yes/no) whose rerank
    prompt is `rerank_template` (None: no template, llama.cpp's BOS query EOS SEP doc EOS)."""
    import gguf

    path = Path(path)
    tokens, scores, types = vocabulary()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    if split_max_tensors:
        staging = path.with_name(f".{path.name}.{os.getpid()}.split")
        staging.mkdir(exist_ok=True)
        tmp = staging / path.name
    else:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arch = "qwen3" if reranker else "llama"
    writer = gguf.GGUFWriter(str(tmp), arch, split_max_tensors=split_max_tensors)
    writer.add_name(name)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(0)  # all F32
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_eot_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if fim:
        writer.add_uint32("tokenizer.ggml.fim_pre_token_id", tokens.index("<|fim_prefix|>"))
        writer.add_uint32("tokenizer.ggml.fim_suf_token_id", tokens.index("<|fim_suffix|>"))
        writer.add_uint32("tokenizer.ggml.fim_mid_token_id", tokens.index("<|fim_middle|>"))
    if fim_repo:  # repo-level FIM: borrows the ChatML tokens (the vocabulary stays the same)
        writer.add_uint32("tokenizer.ggml.fim_rep_token_id", tokens.index("<|im_start|>"))
        writer.add_uint32("tokenizer.ggml.fim_sep_token_id", tokens.index("<|im_end|>"))
    if chat_template:
        writer.add_chat_template(chat_template)
    if reranker:
        writer.add_classifier_output_labels(["yes", "no"])
        if rerank_template:
            writer.add_string("tokenizer.chat_template.rerank", rerank_template)
            writer.add_array("tokenizer.chat_templates", ["rerank"])

    writer.add_tensor("token_embd.weight", w(n_vocab, n_embd, scale=0.5))
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", w(n_embd, n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", w(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", w(n_head_kv * head_dim, n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", w(n_embd, n_embd))
        if reranker:
            writer.add_tensor(f"blk.{i}.attn_q_norm.weight", np.ones(head_dim, dtype=np.float32))
            writer.add_tensor(f"blk.{i}.attn_k_norm.weight", np.ones(head_dim, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(n_ff, n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", w(n_vocab, n_embd, scale=0.5))
    if reranker:
        writer.add_tensor("cls.output.weight", w(2, n_embd, scale=0.5))  # logits of "yes", "no"

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if split_max_tensors:
        shards = sorted(staging.iterdir())
        for shard in shards:
            os.replace(shard, path.with_name(shard.name))
        staging.rmdir()
        return path.with_name(shards[0].name)
    os.replace(tmp, path)
    return path


def build_tiny_lora(path: str | os.PathLike, *, rank: int = 4, seed: int = 99, **model_kw) -> Path:
    """A LoRA adapter for `build_tiny_gguf` (same shapes) on every attention/FFN projection."""
    import gguf

    path = Path(path)
    n_embd = model_kw.get("n_embd", 64)
    n_head = model_kw.get("n_head", 4)
    n_head_kv = model_kw.get("n_head_kv", 2)
    n_ff = model_kw.get("n_ff", 128)
    n_layer = model_kw.get("n_layer", 2)
    kv = n_head_kv * (n_embd // n_head)
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    shapes = {"attn_q": (n_embd, n_embd), "attn_v": (kv, n_embd), "ffn_up": (n_ff, n_embd)}
    for i in range(n_layer):
        for name, (n_out, n_in) in shapes.items():
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_a", (rng.standard_normal((rank, n_in)) * 0.5).astype(np.float32))
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_b", (rng.standard_normal((n_out, rank)) * 0.5).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m kubellama_server.testing.tiny_gguf OUT.gguf")
    print(build_tiny_gguf(argv[0]))


if __name__ == "__main__":
    main()
