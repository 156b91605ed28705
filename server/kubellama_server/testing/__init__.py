"""Helpers for tests and end-to-end setups (need the `test` extra)."""
