"""Which events of the router's and autoscaler's children start a reconcile pass (pure)."""

from __future__ import annotations

from kubellama_operator.handlers import SPEC_CHILD_RESOURCES, SpecChanges
from kubellama_operator.rbac import allows


def test_spec_edits_and_deletions_count_status_updates_do_not():
    changes = SpecChanges()
    hpa = {"uid": "u1", "generation": 1}
    assert not changes(None, hpa)  # kopf's initial listing
    assert not changes("MODIFIED", hpa)  # a status update: same generation
    assert changes("MODIFIED", {**hpa, "generation": 2})  # someone edited the spec
    assert not changes("MODIFIED", {**hpa, "generation": 2})
    assert changes("DELETED", hpa) and "u1" not in changes.seen  # forgotten: bounded by live children
    assert not changes("ADDED", {"uid": "u2", "generation": 1})  # created (by the pass itself)
    assert changes("MODIFIED", {"uid": "u3"})  # no generation (a Role): every edit counts


def test_the_operator_may_watch_what_it_follows():
    for group, _version, plural in SPEC_CHILD_RESOURCES:
        assert allows(group, plural, "list") and allows(group, plural, "watch"), plural
