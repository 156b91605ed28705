"""Fetch errors: each says what happened and what to do, and carries a process exit code.

The exit codes are a contract with the operator, which reads them (and the
termination message) from the `kubellama-fetch` init container.
"""

from __future__ import annotations

EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAUTHORIZED = 4
EXIT_NETWORK = 5
EXIT_DISK_FULL = 6
EXIT_CHECKSUM = 7
EXIT_NOT_GGUF = 8


class FetchError(Exception):
    """Base class; `str(err)` is a one-line message for a human."""

    exit_code = EXIT_OTHER
    reason = "error"  # short machine-readable tag, e.g. for JSON progress lines

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line

    @property
    def message(self) -> str:
        return str(self)


class UsageError(FetchError):
    exit_code = EXIT_USAGE
    reason = "usage"


class NotFoundError(FetchError):
    exit_code = EXIT_NOT_FOUND
    reason = "not_found"


class OfflineMissError(NotFoundError):
    """`--offline` and the file is not (completely) in the cache."""

    reason = "offline_missing"


class UnauthorizedError(FetchError):
    exit_code = EXIT_UNAUTHORIZED
    reason = "unauthorized"


class NetworkError(FetchError):
    exit_code = EXIT_NETWORK
    reason = "network"


class DiskFullError(FetchError):
    exit_code = EXIT_DISK_FULL
    reason = "disk_full"


class ChecksumMismatchError(FetchError):
    exit_code = EXIT_CHECKSUM
    reason = "checksum_mismatch"

    def __init__(self, message: str, *, expected: str, actual: str):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class NotGGUFError(FetchError):
    exit_code = EXIT_NOT_GGUF
    reason = "not_gguf"


class ServerError(FetchError):
    """The remote kept answering 5xx (or another unexpected status) after retries."""

    reason = "server_error"
