"""Split GGUF models: `<prefix>-00001-of-00003.gguf`, `-00002-of-...`, ...

llama.cpp loads a split model from its first shard and finds the others beside it by
this naming pattern, so pulling the first shard pulls every shard, each under a name
that keeps the pattern.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from urllib.parse import urlparse, urlunparse

from .source import ModelSource

_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class SplitName:
    prefix: str
    no: int  # 1-based shard number
    count: int

    def shard(self, no: int) -> str:
        return f"{self.prefix}-{no:05d}-of-{self.count:05d}.gguf"


def parse(name: str) -> SplitName | None:
    """The split pattern of a file name; None for an ordinary (single-file) model."""
    m = _SPLIT.match(name)
    if not m:
        return None
    no, count = int(m["no"]), int(m["count"])
    if count < 2 or not 1 <= no <= count:
        return None
    return SplitName(m["prefix"], no, count)


def shard_source(source: ModelSource, no: int) -> ModelSource:
    """The same URL or Hub folder, with the file name of shard `no`."""
    split = parse(source.basename())
    assert split is not None, "shard_source needs a split source"
    name = split.shard(no)
    if source.url:
        parsed = urlparse(source.url)
        return replace(source, url=urlunparse(parsed._replace(path=posixpath.join(posixpath.dirname(parsed.path), name))))
    folder = str(PurePosixPath(source.hf_file).parent)
    return replace(source, hf_file=name if folder == "." else f"{folder}/{name}")
