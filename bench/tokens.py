"""The model's tokenizer, loaded vocabulary-only: end-of-generation token ids (banned
so every peer generates exactly n_predict tokens) and local prompt-token counts."""
from __future__ import annotations

import llama_cpp


class Vocab:
    def __init__(self, model_path: str):
        self._llm = llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)

    def eog_tokens(self) -> list[int]:
        n = llama_cpp.llama_vocab_n_tokens(self._vocab)
        return [t for t in range(n) if llama_cpp.llama_vocab_is_eog(self._vocab, t)]

    def bos_text(self) -> str:
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        return self._llm.detokenize([bos], special=True).decode("utf-8") if bos >= 0 else ""

    def count(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def count_rendered(self, text: str) -> int:
        """Tokens of a rendered chat prompt (its special tokens, BOS included, are parsed)."""
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
