"""The web front end: the built-in page (`static/`) or a user's folder (`--path DIR`).

Registered after every API route, so it only answers GET paths no route claims. It is
public (no key, as in the reference server), so it serves web files only: the types of
WEB_TYPES, no hidden file or folder, nothing outside the folder (symlinks resolved), and
never the server's own key or certificate files. `--path /` therefore publishes no
mounted secret.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse

from ..errors import APIError

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "static"


def check_folder(path: str) -> None:
    """`--path DIR` must be a readable folder. Raises ValueError."""
    if not os.path.isdir(path):
        raise ValueError(f"--path: {path} is not a folder (give the folder holding index.html)")


# the file types of a web page; anything else is not served
WEB_TYPES = frozenset({".html", ".htm", ".js", ".mjs", ".css", ".map", ".json", ".svg", ".png", ".jpg", ".jpeg",
                       ".gif", ".webp", ".avif", ".ico", ".woff", ".woff2", ".ttf", ".otf", ".wasm", ".webmanifest"})


def is_web_file(rel: str) -> bool:
    """Whether a URL path names a web page's file: a web type, no hidden part."""
    parts = [p for p in rel.split("/") if p]
    if any(p.startswith(".") for p in parts):
        return False
    return not parts or Path(parts[-1]).suffix.lower() in WEB_TYPES or "." not in parts[-1]


class StaticFiles:
    def __init__(self, folder: str | None, private: list[str] | None = None):
        self.root = Path(folder).resolve() if folder else BUILTIN_DIR
        # files never served, wherever they are (the API key file, TLS key and certificate)
        self.private = {Path(p).resolve() for p in (private or []) if p}

    def find(self, url_path: str) -> Path | None:
        """The file for a URL path inside the root, never outside it.

        `/completion.js` falls back to the built-in one, so a user's page can import it.
        """
        rel = url_path.lstrip("/") or "index.html"
        if not is_web_file(rel):
            return None
        found = _inside(self.root, rel)
        if found is None and rel in BUILTIN_ASSETS:
            found = _inside(BUILTIN_DIR, rel)
        if found is None or found in self.private or found.suffix.lower() not in WEB_TYPES:
            return None
        return found

    def is_public(self, method: str, path: str) -> bool:
        return method in ("GET", "HEAD") and self.find(path) is not None


BUILTIN_ASSETS = ("completion.js",)


def _inside(root: Path, rel: str) -> Path | None:
    if "\x00" in rel:
        return None
    try:
        candidate = (root / rel).resolve()
    except (OSError, ValueError, RuntimeError):  # a name too long, a symlink loop
        return None
    if candidate != root and root not in candidate.parents:
        return None
    try:
        if candidate.is_dir():
            candidate = candidate / "index.html"
        return candidate if candidate.is_file() else None
    except (OSError, ValueError):
        return None


def install(app: FastAPI, folder: str | None, private: list[str] | None = None) -> StaticFiles:
    files = StaticFiles(folder, private)
    router = APIRouter()

    @router.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static_file(path: str):
        found = files.find(path)
        if found is None:
            raise APIError("File Not Found", "not_found_error")
        media_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        if found.suffix == ".js":
            media_type = "text/javascript"
        return FileResponse(found, media_type=media_type)

    app.include_router(router)
    return files
