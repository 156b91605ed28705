"""Split GGUF models: the first shard brings every shard, under names llama.cpp can follow."""

from __future__ import annotations

import pytest

from kubellama_server.fetch import ModelSource, NotFoundError, UsageError, fetch_model
from kubellama_server.fetch import split

FAST = {"progress": "none", "retries": 1, "backoff": 0.0}
NAMES = [f"tiny-{no:05d}-of-00003.gguf" for no in (1, 2, 3)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, bytes]:
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    folder = tmp_path_factory.mktemp("split")
    first = build_tiny_gguf(folder / "tiny.gguf", split_max_tensors=8)
    assert first.name == NAMES[0]
    return {n: (folder / n).read_bytes() for n in NAMES}


def _loads(path) -> int:
    from kubellama_server.llama.backend import init_backend
    from kubellama_server.llama.model import LlamaModel, ModelLoadParams

    init_backend(verbose=False)
    return LlamaModel(ModelLoadParams(path=str(path))).n_params


def test_split_names():
    s = split.parse("Qwen3-235B-Q4_K_M-00001-of-00005.gguf")
    assert s == split.SplitName("Qwen3-235B-Q4_K_M", 1, 5) and s.shard(5) == "Qwen3-235B-Q4_K_M-00005-of-00005.gguf"
    for plain in ("model.gguf", "m-00001-of-00001.gguf", "m-00004-of-00003.gguf", "m-1-of-3.gguf", "m-00001-of-00003.bin"):
        assert split.parse(plain) is None, plain
    src = ModelSource(url="https://h/r/m-00001-of-00003.gguf?download=true")
    assert split.shard_source(src, 3).url == "https://h/r/m-00003-of-00003.gguf?download=true"
    hf = ModelSource(hf_repo="org/r", hf_file="Q4/m-00001-of-00003.gguf")
    assert split.shard_source(hf, 2).hf_file == "Q4/m-00002-of-00003.gguf"


def test_url_pull_of_the_first_shard_brings_every_shard(model_server, shards, tmp_path):
    urls = {n: model_server.add(f"/models/{n}", data) for n, data in shards.items()}
    path = fetch_model(ModelSource(url=urls[NAMES[0]]), dest=tmp_path, **FAST)
    assert path == tmp_path / NAMES[0]
    for n, data in shards.items():
        assert (tmp_path / n).read_bytes() == data
        assert len(model_server.requests_for(f"/models/{n}", "GET")) == 1
    assert _loads(path) > 0  # llama.cpp finds the other shards beside the first
    n_requests = len(model_server.requests)
    assert fetch_model(ModelSource(url=urls[NAMES[0]]), dest=tmp_path, **FAST) == path
    assert len(model_server.requests) == n_requests  # all three cached


def test_cache_names_keep_the_shard_pattern(model_server, shards):
    for n, data in shards.items():
        model_server.add(f"/m/{n}", data)
    path = fetch_model(ModelSource(url=model_server.url(f"/m/{NAMES[0]}")), **FAST)
    first = split.parse(path.name)
    assert first and first.no == 1 and first.count == 3
    for no in (2, 3):
        assert (path.parent / first.shard(no)).read_bytes() == shards[NAMES[no - 1]]
    assert _loads(path) > 0


def test_hub_pull_of_a_split_model(hf_hub, shards, tmp_path):
    for n, data in shards.items():
        hf_hub.add_hub_file("org/tiny-GGUF", f"Q8_0/{n}", data)
    path = fetch_model(ModelSource(hf_repo="org/tiny-GGUF", hf_file=f"Q8_0/{NAMES[0]}"), dest=tmp_path, **FAST)
    assert path == tmp_path / NAMES[0]
    assert all((tmp_path / n).read_bytes() == data for n, data in shards.items())


def test_a_missing_shard_is_named(model_server, shards, tmp_path):
    model_server.add(f"/models/{NAMES[0]}", shards[NAMES[0]])
    model_server.add(f"/models/{NAMES[2]}", shards[NAMES[2]])
    with pytest.raises(NotFoundError) as err:
        fetch_model(ModelSource(url=model_server.url(f"/models/{NAMES[0]}")), dest=tmp_path, **FAST)
    assert NAMES[1] in str(err.value)
    assert not (tmp_path / NAMES[1]).exists()


def test_only_the_first_shard_may_be_given(model_server, shards, tmp_path):
    with pytest.raises(UsageError, match=NAMES[0]):
        fetch_model(ModelSource(url=model_server.url(f"/models/{NAMES[1]}")), dest=tmp_path, **FAST)
    assert model_server.requests == []


def test_local_first_shard_needs_its_siblings(shards, tmp_path):
    (tmp_path / NAMES[0]).write_bytes(shards[NAMES[0]])
    (tmp_path / NAMES[1]).write_bytes(shards[NAMES[1]])
    with pytest.raises(NotFoundError, match=f"{NAMES[2]} is missing"):
        fetch_model(ModelSource(path=str(tmp_path / NAMES[0])), **FAST)
    (tmp_path / NAMES[2]).write_bytes(shards[NAMES[2]])
    assert fetch_model(ModelSource(path=str(tmp_path / NAMES[0])), **FAST) == tmp_path / NAMES[0]
