"""Model pulls: URL and Hugging Face downloads that resume, verify and cache.

Used by `kubellama-server -mu/-hfr/-hff` at start-up and by the `kubellama-fetch`
command (the operator's init container):

    from kubellama_server.fetch import ModelSource, fetch_model, FetchError
    path = fetch_model(ModelSource(url="https://host/model.gguf"), sha256=None)
"""

from .core import fetch_model, normalize_sha256
from .errors import (
    ChecksumMismatchError,
    DiskFullError,
    FetchError,
    NetworkError,
    NotFoundError,
    NotGGUFError,
    OfflineMissError,
    ServerError,
    UnauthorizedError,
    UsageError,
)
from .progress import Progress
from .source import ModelSource

__all__ = [
    "ChecksumMismatchError",
    "DiskFullError",
    "FetchError",
    "ModelSource",
    "NetworkError",
    "NotFoundError",
    "NotGGUFError",
    "OfflineMissError",
    "Progress",
    "ServerError",
    "UnauthorizedError",
    "UsageError",
    "fetch_model",
    "normalize_sha256",
]
