"""Images in requests: `image_data` with `[img-ID]` places (/completion) and OpenAI `image_url` parts.

The images become bytes in the task, and their places become libmtmd's media marker
in the prompt text; the scheduler tokenizes the two together (`llama.mtmd`).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ..errors import invalid
from ..llama.mtmd import MEDIA_MARKER

IMAGE_PLACE = re.compile(r"\[img-(-?\d+)\]")


def require_multimodal(engine, what: str) -> None:
    if not engine.multimodal_enabled:
        raise invalid(f"{what} needs a multimodal model: start the server with --mmproj")


def decode_base64(data: Any, where: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise invalid(f"'{where}' must be a non-empty base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{where}' is not valid base64") from None


def completion_images(prompt: Any, image_data: Any, key: str = "prompt") -> tuple[str, list[bytes]]:
    """The prompt with each `[img-ID]` replaced by the media marker, and the images in that order."""
    if not isinstance(image_data, list):
        raise invalid("'image_data' must be an array of {\"data\": base64, \"id\": int} objects")
    if not isinstance(prompt, str):
        raise invalid(f"'{key}' must be a string when 'image_data' is given (images go at its [img-ID] places)")
    by_id: dict[int, bytes] = {}
    for k, item in enumerate(image_data):
        if not isinstance(item, dict) or isinstance(item.get("id"), bool) or not isinstance(item.get("id"), int):
            raise invalid(f"'image_data.{k}' must be an object with 'data' (base64) and an integer 'id'")
        if item["id"] in by_id:
            raise invalid(f"'image_data' has two images with id {item['id']}")
        by_id[item["id"]] = decode_base64(item.get("data"), f"image_data.{k}.data")
    if MEDIA_MARKER in prompt:
        raise invalid(f"'{key}' contains {MEDIA_MARKER!r}, which this server reserves for images; use [img-ID]")
    images: list[bytes] = []
    used: set[int] = set()

    def place(m: re.Match) -> str:
        image_id = int(m.group(1))
        if image_id not in by_id:
            raise invalid(f"'{key}' refers to [img-{image_id}], but 'image_data' has no image with id {image_id}")
        images.append(by_id[image_id])
        used.add(image_id)
        return MEDIA_MARKER

    text = IMAGE_PLACE.sub(place, prompt)
    unused = sorted(set(by_id) - used)
    if unused:
        raise invalid(f"'image_data' has images '{key}' does not place: put [img-{unused[0]}] where image {unused[0]} goes")
    return text, images


def multimodal_prompt(prompt: dict) -> tuple[str, list[bytes]]:
    """Today's llama.cpp form: `{"prompt_string": "... <__media__> ...", "multimodal_data": [base64, ...]}`."""
    text = prompt.get("prompt_string")
    if not isinstance(text, str):
        raise invalid("'prompt' must be a string, a token array, or an object with a 'prompt_string' string")
    data = prompt.get("multimodal_data", [])
    if not isinstance(data, list):
        raise invalid("'prompt.multimodal_data' must be an array of base64 strings")
    images = [decode_base64(d, f"prompt.multimodal_data.{k}") for k, d in enumerate(data)]
    if text.count(MEDIA_MARKER) != len(images):
        raise invalid(f"'prompt.prompt_string' has {text.count(MEDIA_MARKER)} {MEDIA_MARKER} places for "
                      f"{len(images)} images in 'prompt.multimodal_data'")
    return text, images


_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.S)


def data_url_image(url: Any, where: str) -> bytes:
    """The bytes of a `data:image/...;base64,...` URL (remote URLs are not fetched)."""
    if not isinstance(url, str) or not url:
        raise invalid(f"'{where}' must be a URL string")
    m = _DATA_URL.fullmatch(url)
    if m is None:
        if url.startswith(("http://", "https://")):
            raise invalid(f"'{where}': this server does not download images; send it inline as a data:image/...;base64,... URL")
        raise invalid(f"'{where}' must be a data:image/...;base64,... URL")
    mime = m.group("mime") or ""
    if mime and not mime.startswith("image/"):
        raise invalid(f"'{where}' has media type {mime!r}: only images are supported")
    return decode_base64(m.group("data"), where)
