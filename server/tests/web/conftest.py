from __future__ import annotations

import pytest

from .cdp import CHROMIUM, Browser, available


@pytest.fixture
def browser():
    if not available():
        pytest.skip(f"chromium not installed at {CHROMIUM} (make test installs it: mk/chromium.mk)")
    b = Browser()
    yield b
    b.close()
