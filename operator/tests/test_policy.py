"""The operator's allow-lists for spec.image and spec.serviceAccountName (pure)."""

from __future__ import annotations

import pytest

from kubellama_operator.config import OperatorConfig
from kubellama_operator.policy import allowed, policy_problems
from kubellama_operator.spec import parse

LISTS = OperatorConfig(allowed_images=("ghcr.io/kubellama/*", "registry.internal/llm/server:1.*"),
                       allowed_service_accounts=("llm", "team-*"))


def spec(**fields):
    return parse({"model": {"url": "https://m.test/a.gguf"}, **fields})


@pytest.mark.parametrize("value, ok", [
    ("ghcr.io/kubellama/kubellama-server:0.2.0", True), ("ghcr.io/kubellama/x@sha256:" + "a" * 64, True),
    ("registry.internal/llm/server:1.4", True), ("registry.internal/llm/server:2.0", False),
    ("ghcr.io/kubellamaevil/server:1", False), ("docker.io/attacker/miner:latest", False),
    ("GHCR.IO/kubellama/server", False),
])
def test_image_patterns(value, ok):
    assert allowed(value, LISTS.allowed_images) is ok
    found = policy_problems(spec(image=value), LISTS)
    assert (found == []) is ok
    if not ok:
        assert found == [f"spec.image {value!r} is not allowed by the operator (allowed: ghcr.io/kubellama/*, "
                         "registry.internal/llm/server:1.*): use one of those, or unset it for the default image"]


@pytest.mark.parametrize("value, ok", [("llm", True), ("team-a", True), ("default", False), ("llm-admin", False)])
def test_service_account_patterns(value, ok):
    found = policy_problems(spec(serviceAccountName=value), LISTS)
    assert (found == []) is ok
    if not ok:
        assert f"spec.serviceAccountName {value!r} is not allowed" in found[0] and "llm, team-*" in found[0]


def test_empty_lists_allow_anything_and_unset_fields_are_not_checked():
    assert policy_problems(spec(image="anything:1", serviceAccountName="admin"), OperatorConfig()) == []
    assert policy_problems(spec(), LISTS) == [], "the operator's own images and no service account are fine"
    both = policy_problems(spec(image="x:1", serviceAccountName="admin"), LISTS)
    assert len(both) == 2
