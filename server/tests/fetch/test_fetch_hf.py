"""Hugging Face pulls: the real `huggingface_hub` client against a loopback Hub (via HF_ENDPOINT)."""

from __future__ import annotations

import json

import pytest

from kubellama_server.fetch import (
    ChecksumMismatchError,
    ModelSource,
    NetworkError,
    NotFoundError,
    UnauthorizedError,
    fetch_model,
)

FAST = {"progress": "none", "retries": 1, "backoff": 0.0}
REPO = "kubellama/tiny-GGUF"


def _src(**kw) -> ModelSource:
    return ModelSource(hf_repo=kw.pop("repo", REPO), hf_file=kw.pop("file", "tiny-Q8_0.gguf"), **kw)


def test_public_lfs_file_is_resolved_downloaded_and_verified(hf_hub, tiny_bytes, tiny_sha, tmp_path):
    commit = hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes)
    path = fetch_model(_src(), dest=tmp_path, **FAST)
    assert path == tmp_path / "tiny-Q8_0.gguf" and path.read_bytes() == tiny_bytes
    meta = json.loads((tmp_path / "tiny-Q8_0.gguf.meta.json").read_text())
    assert meta["source"] == {"hf_repo": REPO, "hf_file": "tiny-Q8_0.gguf", "hf_revision": "main"}
    assert meta["hf_commit"] == commit and meta["sha256"] == tiny_sha
    assert meta["sha256_verified_against"] == "hub", "the LFS sha256 the Hub publishes is checked"
    # the real client asked the Hub (HEAD resolve), the bytes came from the CDN
    heads = hf_hub.requests_for(f"/{REPO}/resolve/main/tiny-Q8_0.gguf", "HEAD")
    assert len(heads) == 1 and "hf_hub/" in heads[0].headers["user-agent"]
    assert "kubellama-fetch" in heads[0].headers["user-agent"]
    cdn_gets = hf_hub.cdn.requests_for(hf_hub.cdn_path(tiny_bytes), "GET")
    assert len(cdn_gets) == 1 and cdn_gets[0].sent == len(tiny_bytes)


def test_second_run_needs_no_hub(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes)
    fetch_model(_src(), dest=tmp_path, **FAST)
    n_hub, n_cdn = len(hf_hub.requests), len(hf_hub.cdn.requests)
    assert fetch_model(_src(), dest=tmp_path, **FAST) == tmp_path / "tiny-Q8_0.gguf"
    assert fetch_model(_src(), dest=tmp_path, offline=True, **FAST) == tmp_path / "tiny-Q8_0.gguf"
    assert (len(hf_hub.requests), len(hf_hub.cdn.requests)) == (n_hub, n_cdn)


def test_gated_repo_without_token_gives_a_clear_error(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes, gated=True, token="hf_secret")
    with pytest.raises(UnauthorizedError) as err:
        fetch_model(_src(), dest=tmp_path, **FAST)
    msg = str(err.value)
    assert err.value.exit_code == 4
    assert "gated" in msg and "HF_TOKEN" in msg and f"{hf_hub.base_url}/{REPO}" in msg, msg
    assert not list(tmp_path.glob("*.gguf"))


def test_gated_repo_with_token_from_env(hf_hub, tiny_bytes, tmp_path, monkeypatch):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes, gated=True, token="hf_secret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert fetch_model(_src(), dest=tmp_path, **FAST).read_bytes() == tiny_bytes
    hub_reqs = hf_hub.requests_for(f"/{REPO}/resolve/main/tiny-Q8_0.gguf")
    assert hub_reqs and all(r.headers.get("authorization") == "Bearer hf_secret" for r in hub_reqs)
    cdn = hf_hub.cdn.requests_for(hf_hub.cdn_path(tiny_bytes))
    assert cdn and all("authorization" not in r.headers for r in cdn), "the token must not leave the Hub"


def test_gated_repo_with_token_file(hf_hub, tiny_bytes, tmp_path, monkeypatch):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes, gated=True, token="hf_from_file")
    token_file = tmp_path / "token"
    token_file.write_text("hf_from_file\n")
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    assert fetch_model(_src(), dest=tmp_path / "m", **FAST).read_bytes() == tiny_bytes


def test_wrong_token_says_the_token_lacks_access(hf_hub, tiny_bytes, tmp_path, monkeypatch):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes, gated=True, token="hf_right")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(UnauthorizedError) as err:
        fetch_model(_src(), dest=tmp_path, **FAST)
    assert "403" in str(err.value) and "token in use has no access" in str(err.value)


def test_missing_file_and_revision_are_not_found(hf_hub, tiny_bytes, tmp_path):
    commit = hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes)
    with pytest.raises(NotFoundError) as err:
        fetch_model(_src(file="tiny-Q4_K_M.gguf"), dest=tmp_path, **FAST)
    assert err.value.exit_code == 3 and "tiny-Q4_K_M.gguf" in str(err.value) and "tree/main" in str(err.value)
    with pytest.raises(NotFoundError) as err:
        fetch_model(_src(hf_revision="v9"), dest=tmp_path, **FAST)
    assert "revision 'v9'" in str(err.value)
    # a pinned commit works, and is part of the cache name when no --dest is given
    path = fetch_model(_src(hf_revision=commit), **FAST)
    assert path.name == f"kubellama_tiny-GGUF_{commit}_tiny-Q8_0.gguf"


def test_unknown_repo_without_token_is_unauthorized_or_missing(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes)
    with pytest.raises(UnauthorizedError) as err:
        fetch_model(_src(repo="kubellama/private-GGUF"), dest=tmp_path, **FAST)
    assert "not found or is private" in str(err.value) and "HF_TOKEN" in str(err.value)


def test_corrupted_cdn_bytes_fail_the_hub_checksum(hf_hub, tiny_bytes, tiny_sha, tmp_path):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes, corrupt=True)
    with pytest.raises(ChecksumMismatchError) as err:
        fetch_model(_src(), dest=tmp_path, **FAST)
    assert tiny_sha in str(err.value) and err.value.actual in str(err.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_pinned_sha_that_disagrees_with_the_hub_fails_before_downloading(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes)
    with pytest.raises(ChecksumMismatchError):
        fetch_model(_src(), dest=tmp_path, sha256="a" * 64, **FAST)
    assert hf_hub.cdn.requests == []


def test_cut_cdn_download_resumes(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes, cut_after=123_456)
    assert fetch_model(_src(), dest=tmp_path, **FAST).read_bytes() == tiny_bytes
    gets = hf_hub.cdn.requests_for(hf_hub.cdn_path(tiny_bytes), "GET")
    assert [g.sent for g in gets] == [123_456, len(tiny_bytes) - 123_456]


def test_small_non_lfs_file_served_by_the_hub_itself(hf_hub, tiny_bytes, tmp_path):
    hf_hub.add_hub_file(REPO, "tiny-Q8_0.gguf", tiny_bytes, lfs=False)
    assert fetch_model(_src(), dest=tmp_path, **FAST).read_bytes() == tiny_bytes
    meta = json.loads((tmp_path / "tiny-Q8_0.gguf.meta.json").read_text())
    assert meta["sha256_verified_against"] is None  # a git blob id is no sha256


def test_hub_unreachable_is_a_network_error(monkeypatch, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(NetworkError) as err:
        fetch_model(_src(), dest=tmp_path, **FAST)
    assert err.value.exit_code == 5 and "Hugging Face Hub" in str(err.value)
