"""Does a live object already contain everything we would apply? (Skip no-op writes.)"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any


def contains(live: Any, desired: Any) -> bool:
    """True when `desired` is a subset of `live`: every desired key/value is present.

    Dicts compare key by key (the API server adds defaults and status, which we ignore);
    lists must have the same length and each desired element contained in the live one.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(contains(a, b) for a, b in zip(live, desired)))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, (int, float)) and isinstance(live, (int, float)):
        return live == desired
    return live == desired or str(live) == str(desired)


def needs_apply(live: dict[str, Any] | None, desired: dict[str, Any]) -> bool:
    if live is None:
        return True
    return not (contains(live.get("metadata", {}), desired.get("metadata", {}))
                and all(contains(live.get(k), v) for k, v in desired.items()
                        if k not in ("metadata", "apiVersion", "kind")))


HASH_ANNOTATION = "kubellama.dev/desired-hash"


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` plus an annotation hashing it: a removed field changes the hash, so the subset check
    in `needs_apply` also notices removals (server-side apply then drops the field)."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = copy.deepcopy(obj)
    out["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return out
