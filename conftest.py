"""Suite-wide rule: under KUBELLAMA_REQUIRE_CLUSTER=1 (what .ci/run sets) a skipped test fails.

Every skip in this suite stands for a missing tool (control plane, local node, helm,
chromium, the default model, ...), which `make test` installs; in CI a skip would hide a
missing install step, so there it is a failure that names the reason."""

from __future__ import annotations

import os

import pytest

REQUIRE = os.environ.get("KUBELLAMA_REQUIRE_CLUSTER") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and KUBELLAMA_REQUIRE_CLUSTER=1 forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """The same for a whole module skipped at collection (`allow_module_level=True`)."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE and report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and KUBELLAMA_REQUIRE_CLUSTER=1 forbids skips: {reason}"
