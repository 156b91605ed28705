"""URLs without their credentials, for metadata, file names and logs.

A model URL may carry credentials: `user:password@host`, or a token in its query
(`?token=...`, presigned S3/GCS/Azure signatures). Those are needed for the GET only;
everything written down or printed uses `redact_url`, which drops the user info and
replaces the values of credential-like query parameters.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

REDACTED = "REDACTED"
# query parameter names (lower case) that hold credentials when they contain one of these
_SECRET_PARTS = ("token", "key", "sig", "secret", "pass", "auth", "credential", "session", "code", "jwt", "bearer")


def is_secret_param(name: str) -> bool:
    n = name.lower()
    return any(part in n for part in _SECRET_PARTS)


def redact_url(url: str) -> str:
    """`url` without user info and with credential-like query values replaced."""
    try:
        p = urlparse(url)
    except ValueError:
        return "<an invalid URL>"
    netloc = p.netloc.rpartition("@")[2]
    query = p.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_param(k) for k, _ in pairs):
            query = urlencode([(k, REDACTED if is_secret_param(k) else v) for k, v in pairs])
    return urlunparse(p._replace(netloc=netloc, query=query))
