"""Hugging Face Hub files, resolved with `huggingface_hub` and downloaded by our resumable HTTP code.

`huggingface_hub` does the Hub-specific part (URL layout, auth headers, HEAD
metadata, error decoding); the bytes then come from the resolve URL through
`http.download`, which follows the redirect to the CDN (dropping the token there).
Token: `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`), else the file named by
`HF_TOKEN_PATH`, else the token saved by `hf auth login`. `HF_ENDPOINT` is read
at call time.
"""

from __future__ import annotations

import inspect
import os
import re
import time
from pathlib import Path

from .errors import FetchError, NetworkError, NotFoundError, OfflineMissError, ServerError, UnauthorizedError
from .http import Remote, __version__
from .progress import Progress

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def resolve_token() -> str | None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip()
    token_path = os.environ.get("HF_TOKEN_PATH")
    if token_path:
        try:
            token = Path(token_path).expanduser().read_text().strip()
        except FileNotFoundError:
            return None  # the usual state before `hf auth login`; public files still work
        except OSError as exc:
            raise FetchError(f"cannot read the Hugging Face token file HF_TOKEN_PATH={token_path}: {exc.strerror}") from exc
        return token or None
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - a broken token store must not stop public downloads
        return None


def endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def resolve(repo: str, filename: str, revision: str | None, progress: Progress, *,
            retries: int = 5, backoff: float = 1.0) -> Remote:
    """HEAD the Hub's resolve URL: size, LFS sha256, commit; map Hub errors to FetchErrors."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    revision = revision or "main"
    token = resolve_token()
    base = endpoint()
    url = hf_hub_url(repo, filename, revision=revision, endpoint=base)
    kwargs = {"token": token or False, "library_name": "kubellama-fetch", "library_version": __version__}
    params = inspect.signature(get_hf_file_metadata).parameters
    if "endpoint" in params:
        kwargs["endpoint"] = base
    if "retry_on_errors" in params:
        kwargs["retry_on_errors"] = False  # we retry ourselves, with our messages
    where = f"{repo}/{filename}@{revision} on {base}"
    attempt = 0
    while True:
        attempt += 1
        try:
            meta = get_hf_file_metadata(url, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many kinds
            err = _map_error(exc, repo, filename, revision, base, token)
            if not isinstance(err, (NetworkError, ServerError)) or attempt > retries:
                raise err from exc
            delay = min(backoff * 2 ** (attempt - 1), 30.0)
            progress.message(f"{err}; retrying in {delay:.1f}s (attempt {attempt + 1} of {retries + 1})", "retry")
            time.sleep(delay)
    etag = (meta.etag or "").strip('"').lower()
    return Remote(
        url=url,
        headers=build_hf_headers(token=token or False, library_name="kubellama-fetch",
                                 library_version=__version__),
        size=meta.size,
        sha256=etag if _SHA256.match(etag) else None,  # LFS files: the ETag is the sha256
        hint=_auth_hint(repo, base, token),
        info={"hf_commit": meta.commit_hash, "hf_endpoint": base, "resolved_from": where},
    )


def _auth_hint(repo: str, base: str, token: str | None) -> str:
    if token:
        return (f"the token in use has no access to {repo}: accept the model's licence at {base}/{repo} "
                "with the token's account, or use a token with read access")
    return (f"{repo} may be gated or private: accept its licence at {base}/{repo} and give a read token "
            "in HF_TOKEN (or a token file via HF_TOKEN_PATH)")


def _map_error(exc: Exception, repo, filename, revision, base, token) -> FetchError:
    from huggingface_hub import errors as hf_errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    name = type(exc).__name__
    if name == "OfflineModeIsEnabled":
        return OfflineMissError(f"HF_HUB_OFFLINE is set, so {repo}/{filename} cannot be downloaded; "
                                "unset it or put the file in the cache first")
    if isinstance(exc, hf_errors.GatedRepoError) or (status in (401, 403) and isinstance(
            exc, hf_errors.RepositoryNotFoundError)):
        what = "is gated" if isinstance(exc, hf_errors.GatedRepoError) else "was not found or is private"
        return UnauthorizedError(f"Hugging Face repo {repo} {what} (HTTP {status}); {_auth_hint(repo, base, token)}")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return NotFoundError(f"Hugging Face repo {repo} does not exist on {base} (HTTP {status}); check --hf-repo")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return NotFoundError(f"revision {revision!r} does not exist in {repo} (HTTP {status}); "
                             "check --hf-revision (a branch, tag or commit)")
    if isinstance(exc, hf_errors.EntryNotFoundError) or name.endswith("EntryNotFoundError"):
        return NotFoundError(f"{filename!r} is not in {repo} at revision {revision} (HTTP {status}); "
                             f"check --hf-file against the file list at {base}/{repo}/tree/{revision}")
    if status in (401, 403):
        return UnauthorizedError(f"{base} refused access to {repo}/{filename} (HTTP {status}); "
                                 f"{_auth_hint(repo, base, token)}")
    if status == 404:
        return NotFoundError(f"{repo}/{filename}@{revision} was not found on {base} (HTTP 404)")
    if status is not None and (status >= 500 or status in (408, 429)):
        return ServerError(f"{base} answered HTTP {status} for {repo}/{filename}; try again later")
    if status is not None:
        return FetchError(f"{base} answered HTTP {status} for {repo}/{filename}: {exc}")
    if _is_network(exc):
        return NetworkError(f"cannot reach the Hugging Face Hub at {base} ({name}: {exc}); check DNS, "
                            "proxy settings (HTTPS_PROXY/NO_PROXY), HF_ENDPOINT and the pod's egress rules")
    return FetchError(f"resolving {repo}/{filename}@{revision} on {base} failed: {name}: {exc}")


def _is_network(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(
                k in name for k in ("Connect", "Timeout", "NetworkError", "ReadError", "RemoteProtocol")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
