"""Reads a Prometheus text page (`/metrics`): the one reader of the router's load scrape, the operator's
LoRA-scale check, the bench and the tests.

prometheus_client's parser does the parsing (labels, escapes, names with colons such as
`llamacpp:requests_processing`); this adds a size cap and turns a malformed page into None, never an
exception. It imports prometheus_client only: the slim operator image loads it too.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["MAX_PAGE_BYTES", "Sample", "read_samples"]

#: Largest page read unless the caller says otherwise (bytes, or characters of a str page).
MAX_PAGE_BYTES = 1 << 20


def _cut(page: str | bytes, limit: int) -> str | bytes:
    """`page` up to its last complete line within `limit` (a cut line would not parse)."""
    if len(page) <= limit:
        return page
    end = page.rfind(b"\n" if isinstance(page, bytes) else "\n", 0, limit)
    return page[:end + 1]


def read_samples(page: str | bytes, names: Collection[str], *,
                 limit: int | None = MAX_PAGE_BYTES) -> list[Sample] | None:
    """The samples of the metrics `names` on `page`, in page order, each with its labels; None when the page
    is malformed.

    A sample's name is the full series name (`x_total`, `x_bucket`, ...). A page longer than `limit` is read
    up to its last complete line within it (None: no cap, for trusted pages only).
    """
    if limit is not None:
        page = _cut(page, limit)
    text = page.decode("utf-8", "replace") if isinstance(page, bytes) else page
    wanted = frozenset((names,) if isinstance(names, str) else names)
    try:
        return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name in wanted]
    except ValueError:  # the parser's only complaint about a malformed line
        return None
