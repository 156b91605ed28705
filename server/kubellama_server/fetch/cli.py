"""`kubellama-fetch`: put a model file in place (the operator's init container) and print its path.

Exit codes: 0 ok, 1 other, 2 usage, 3 not found, 4 unauthorized, 5 network
unreachable, 6 disk full, 7 checksum mismatch, 8 not a GGUF file. On failure a
one-line message goes to stderr and to /dev/termination-log (when writable); on
success that file gets a JSON summary ({"path", "size", "sha256", "source", ...}).

Environment: HF_TOKEN (or a token file named by HF_TOKEN_PATH) for gated or
private Hugging Face repos; HF_ENDPOINT (a Hub mirror); LLAMA_CACHE (the cache
folder when --dest is not given); HTTPS_PROXY/NO_PROXY; SSL_CERT_FILE;
KUBELLAMA_FETCH_PROGRESS_INTERVAL (seconds between JSON progress lines, default 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cache import Paths, read_json
from .core import fetch_model
from .errors import EXIT_OTHER, FetchError, UsageError
from .hf_pick import resolve_files
from .progress import MODES
from .source import ModelSource
from .termination import write_termination_message

PROG = "kubellama-fetch"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors go through the same reporting path (exit 2)
        raise UsageError(f"{message} (see `{PROG} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Download a GGUF model (resumable, verified, cached) and print its local path.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("source (one of)")
    src.add_argument("--url", "-mu", "--model-url", dest="url", metavar="URL", help="http(s) URL of a .gguf file")
    src.add_argument("--hf-repo", "-hfr", "-hf", metavar="REPO",
                     help="Hugging Face repo, org/name-GGUF[:QUANT]; without --hf-file the file is picked by its "
                          "quantization (Q4_K_M by default)")
    src.add_argument("--hf-file", "-hff", metavar="FILE", help="file in the repo, e.g. model-Q4_K_M.gguf")
    src.add_argument("--hf-revision", metavar="REV", help="branch, tag or commit (default main)")
    p.add_argument("--sha256", metavar="HEX", help="expected sha256 of the file; checked before it gets its name")
    p.add_argument("--dest", metavar="DIR", type=Path,
                   help="put the file at DIR/<file name> (default: the cache, $LLAMA_CACHE or "
                        "~/.cache/kubellama/models, under a name derived from the source)")
    p.add_argument("--offline", action="store_true", help="never use the network; fail if the file is not there")
    p.add_argument("--progress", choices=MODES, default="auto",
                   help="progress on stderr: a bar on a terminal, JSON lines otherwise (default auto)")
    p.add_argument("--retries", type=int, default=5, metavar="N",
                   help="retries on connection errors and 5xx answers within this run (default 5)")
    p.add_argument("--retry-backoff", type=float, default=1.0, metavar="SECONDS",
                   help="first retry delay, doubled each time up to 30s (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="network timeout for connecting and between received bytes (default 30)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.retries < 0 or args.retry_backoff < 0 or args.timeout <= 0:
            raise UsageError("--retries and --retry-backoff must be >= 0 and --timeout > 0")
        hf_repo, hf_file = args.hf_repo, args.hf_file
        if hf_repo and not hf_file:  # org/name[:QUANT]: pick the file as `kubellama-server -hf` does
            hf_repo, hf_file, _ = resolve_files(hf_repo, args.hf_revision, projector=False, offline=args.offline,
                                                cache_dir=args.dest)
            print(f"{PROG}: picked {hf_file} from {hf_repo}", file=sys.stderr)
        elif hf_repo and ":" in hf_repo:
            raise UsageError("give the quantization (--hf-repo org/name:QUANT) or --hf-file, not both")
        source = ModelSource(url=args.url, hf_repo=hf_repo, hf_file=hf_file, hf_revision=args.hf_revision)
        path = fetch_model(source, dest=args.dest, sha256=args.sha256, offline=args.offline,
                           progress=args.progress, retries=args.retries, backoff=args.retry_backoff,
                           timeout=args.timeout)
    except FetchError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted; run again to resume the download", 130)
    except Exception as exc:  # noqa: BLE001 - last resort: still one clear line and a termination message
        return _fail(f"unexpected error: {type(exc).__name__}: {exc}; run again, and report it if it persists",
                     EXIT_OTHER)
    print(path)
    write_termination_message(json.dumps(success_summary(path, source), separators=(",", ":")))
    return 0


def success_summary(path: Path, source: ModelSource) -> dict:
    """What the operator reads from a successful init container: path, size, sha256, source."""
    meta = read_json(Paths(path).meta) or {}
    return {
        "path": str(path),
        "size": meta.get("size", path.stat().st_size),
        "sha256": meta.get("sha256"),
        "source": source.describe(),
        "hf_commit": meta.get("hf_commit"),
        "completed_at": meta.get("completed_at"),
    }


def _fail(message: str, code: int) -> int:
    line = f"{PROG}: error: {message}"
    print(line, file=sys.stderr)
    write_termination_message(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
