"""Fixtures for the operator tests (see kmock_harness)."""

from kmock_harness import api, operator, servicemonitor_crd  # noqa: F401  (pytest fixtures)
