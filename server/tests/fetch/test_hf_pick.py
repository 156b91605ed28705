"""`-hf org/name[:QUANT]`: choosing the model and projector files of a Hub repo."""

from __future__ import annotations

import pytest

from kubellama_server.fetch.errors import NotFoundError, UnauthorizedError, UsageError
from kubellama_server.fetch.hf_pick import list_files, pick_model, pick_projector, resolve_files, split_spec

FILES = ["README.md", "gemma-3-4b-it-Q4_K_M.gguf", "gemma-3-4b-it-Q8_0.gguf", "gemma-3-4b-it-q4_0.gguf",
         "gemma-3-4b-it-Q4_K_M-extra.gguf", "mmproj-model-f16.gguf", "mmproj-model-Q8_0.gguf"]
SPLIT = ["big-Q8_0-00002-of-00003.gguf", "big-Q8_0-00001-of-00003.gguf", "big-Q8_0-00003-of-00003.gguf",
         "big-Q2_K.gguf"]


def test_spec():
    assert split_spec("org/name") == ("org/name", None)
    assert split_spec("org/name:Q8_0") == ("org/name", "Q8_0")
    for bad in ("org/name:", ":Q8_0"):
        with pytest.raises(UsageError):
            split_spec(bad)


def test_picking_the_model():
    assert pick_model("r", FILES, None) == "gemma-3-4b-it-Q4_K_M.gguf"  # the default quant, exactly
    assert pick_model("r", FILES, "q8_0") == "gemma-3-4b-it-Q8_0.gguf"  # case-insensitive, never the projector
    assert pick_model("r", FILES, "Q4_0") == "gemma-3-4b-it-q4_0.gguf"
    assert pick_model("r", SPLIT, "Q8_0") == "big-Q8_0-00001-of-00003.gguf"  # a split model by its first shard
    assert pick_model("r", SPLIT, None) == "big-Q2_K.gguf"  # no Q4_K_M: the first model file
    with pytest.raises(NotFoundError, match="has no Q5_K_M file; its GGUF files are: gemma-3-4b-it-Q4_K_M-extra.gguf"):
        pick_model("r", FILES, "Q5_K_M")
    with pytest.raises(NotFoundError, match="no GGUF model file"):
        pick_model("r", ["README.md", "mmproj-f16.gguf"], None)


def test_picking_the_projector():
    assert pick_projector(FILES) == "mmproj-model-f16.gguf"
    assert pick_projector(["mmproj-Q8_0.gguf", "mmproj-q4.gguf"]) == "mmproj-Q8_0.gguf"
    assert pick_projector(SPLIT) is None


def test_listing_a_hub_repo(hf_hub, tiny_bytes):
    for name in ("tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf", "mmproj-tiny-f16.gguf"):
        hf_hub.add_hub_file("kubellama/tiny-GGUF", name, tiny_bytes)
    assert sorted(list_files("kubellama/tiny-GGUF", None)) == ["mmproj-tiny-f16.gguf", "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"]
    assert resolve_files("kubellama/tiny-GGUF:Q8_0", None, projector=True) == (
        "kubellama/tiny-GGUF", "tiny-Q8_0.gguf", "mmproj-tiny-f16.gguf")
    assert resolve_files("kubellama/tiny-GGUF", None, projector=False) == ("kubellama/tiny-GGUF", "tiny-Q4_K_M.gguf", None)
    with pytest.raises(UnauthorizedError, match="was not found or is private"):  # the Hub answers 401 for both
        list_files("kubellama/missing", None)
    hf_hub.add_hub_file("kubellama/gated", "g-Q4_K_M.gguf", tiny_bytes, gated=True, token="hf_x")
    with pytest.raises(UnauthorizedError, match="HF_TOKEN"):
        list_files("kubellama/gated", None)
