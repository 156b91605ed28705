# Headless Chromium for the web front-end tests (server/tests/web): Debian's own
# `chromium` package, installed once per machine with apt (a no-op when
# /usr/bin/chromium exists). The tests drive it over the DevTools protocol with
# the `websockets` test dependency; without chromium they skip with one line.

TEST_SETUP += chromium
.PHONY: chromium

chromium:
	@if [ -x /usr/bin/chromium ]; then \
		:; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "==> installing chromium (Debian package, ~100 MB; once per machine) for server/tests/web"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "==> chromium: /usr/bin/chromium missing and apt-get is not usable as root here; the web page tests will skip"; \
	fi
