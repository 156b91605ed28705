"""Where a model comes from, and the file name it gets on disk."""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlparse

from .errors import UsageError
from .redact import redact_url

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_HF_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_MAX_NAME = 200


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of: `url`; `hf_repo` + `hf_file` (+ `hf_revision`); `path` (used in place)."""

    url: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    hf_revision: str | None = None
    path: str | None = None

    @property
    def kind(self) -> str:
        return "path" if self.path else "url" if self.url else "hf"

    def validate(self) -> None:
        """Raise `UsageError` unless exactly one well-formed source is given."""
        given = [k for k, v in (("url", self.url), ("hf", self.hf_repo or self.hf_file), ("path", self.path)) if v]
        if len(given) != 1:
            raise UsageError(
                "give exactly one model source: a URL (--url / -mu), a Hugging Face repo and file "
                f"(--hf-repo and --hf-file), or a local path; got {', '.join(given) or 'none'}"
            )
        if self.hf_revision and not (self.hf_repo or self.hf_file):
            raise UsageError("--hf-revision needs --hf-repo and --hf-file")
        if self.url:
            parsed = urlparse(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise UsageError(f"model URL {self.url!r} is not an http(s):// URL; give a full URL to a .gguf file")
            if not url_basename(self.url):
                raise UsageError(
                    f"cannot take a file name from the URL {self.url!r}: its path must end with the file name "
                    "(e.g. https://host/models/model.gguf)"
                )
        if self.hf_repo or self.hf_file:
            if not (self.hf_repo and self.hf_file):
                raise UsageError("a Hugging Face source needs both --hf-repo (e.g. org/name) and --hf-file (e.g. model-Q4_K_M.gguf)")
            if not _HF_REPO.match(self.hf_repo):
                raise UsageError(f"{self.hf_repo!r} is not a Hugging Face repo id; write it as org/name")
            if (self.hf_file.startswith("/") or ".." in PurePosixPath(self.hf_file).parts
                    or PurePosixPath(self.hf_file).name in ("", ".")):
                raise UsageError(f"--hf-file {self.hf_file!r} must be a path inside the repo, e.g. model-Q4_K_M.gguf")

    def key(self) -> dict:
        """The identity recorded in the metadata file; equal keys mean the same download.

        A URL is recorded without its credentials (a rotated token is the same file)."""
        if self.url:
            return {"url": redact_url(self.url)}
        if self.hf_repo:
            return {"hf_repo": self.hf_repo, "hf_file": self.hf_file, "hf_revision": self.hf_revision or "main"}
        return {"path": self.path}

    def describe(self) -> str:
        """The source for messages and logs (never a URL's credentials)."""
        if self.url:
            return redact_url(self.url)
        if self.hf_repo:
            return f"hf://{self.hf_repo}/{self.hf_file}@{self.hf_revision or 'main'}"
        return str(self.path)

    def basename(self) -> str:
        """The name under `--dest`: the last segment of the URL path or of the Hub file, as written.

        No decoding or cleaning, so that it equals `posixpath.basename(...)` of the same
        string: the operator computes the server's `-m /models/<name>` that way.
        """
        if self.url:
            return url_basename(self.url)
        if self.hf_file:
            return PurePosixPath(self.hf_file).name
        raise ValueError("a local path has no download name")

    def cache_name(self) -> str:
        """A name for the shared cache folder that keeps different sources apart.

        Hub files: `org_repo_[rev_]file.gguf` (as llama.cpp names them). URLs: the
        host and path, e.g. `example.com_models_model.gguf`. Over-long names are cut
        and made unique with a hash.
        """
        if self.hf_repo:
            parts = [self.hf_repo.replace("/", "_")]
            if self.hf_revision and self.hf_revision != "main":
                parts.append(self.hf_revision)
            parts.append(self.hf_file.replace("/", "_"))
            name = _safe("_".join(parts))
        else:
            shown = redact_url(self.url or "")
            parsed = urlparse(shown)
            name = _safe((parsed.netloc + unquote(parsed.path)).replace("/", "_").replace(":", "_"))
            if parsed.query:
                name = _with_hash(name, shown)
        if len(name) > _MAX_NAME:
            name = _with_hash(name[-(_MAX_NAME - 20):], self.describe())
        return name


def url_basename(url: str) -> str:
    """The raw last segment of the URL path (percent-escapes kept), or "" when there is none."""
    name = posixpath.basename(urlparse(url).path)
    return name if name not in ("", ".", "..") and "\0" not in name else ""


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name).lstrip(".") or "model"


def _with_hash(name: str, salt: str) -> str:
    digest = hashlib.sha256(salt.encode()).hexdigest()[:10]
    stem, dot, ext = name.rpartition(".")
    return f"{stem}-{digest}.{ext}" if dot and len(ext) <= 8 else f"{name}-{digest}"
