"""The real operator (kopf) against kmock's stateful Kubernetes emulator."""

from __future__ import annotations

import pytest

from conftest import NAMESPACE, eventually

pytestmark = pytest.mark.asyncio

LS = "kubellama.dev/v1alpha1"
CPU_SERVER = {
    "apiVersion": LS, "kind": "LlamaServer",
    "metadata": {"name": "gemma", "namespace": NAMESPACE},
    "spec": {"model": {"url": "https://models.test/gemma-3-270m-q4_k_m.gguf"}},
}


async def test_create_makes_children(api, operator):
    await api.create(LS, "llamaservers", CPU_SERVER)
    sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    assert sts["spec"]["replicas"] == 1
    svc = api.objects("v1/services")
    assert set(svc) == {"gemma", "gemma-headless"}
    status = await eventually(lambda: (api.objects(f"{LS}/llamaservers")["gemma"].get("status") or {}).get("phase"))
    print(api.objects(f"{LS}/llamaservers")["gemma"]["status"])
