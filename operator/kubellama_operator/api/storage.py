"""spec.storage: the model cache and saved-slot volumes (claim settings are immutable: StatefulSet rules)."""

from __future__ import annotations

from typing import Literal

from .schema import Quantity, Rule, SpecModel, field

_CLAIMS_IMMUTABLE = ("volume claim settings are immutable (a StatefulSet's volumeClaimTemplates cannot "
                     "change); create a new LlamaServer or resize the PVCs directly")


def immutable(where: str) -> Rule:
    """A transition rule: the field may not change once set (only the API server can check it)."""
    return Rule(f"{where}: {_CLAIMS_IMMUTABLE}", "self == oldSelf")


class ModelStorage(SpecModel):
    """Model cache volume (unused for a pvc model source)."""

    size: Quantity = field("Volume size.", "20Gi")
    storage_class_name: str | None = field("StorageClass of the per-replica claims.", None, maxLength=253)
    access_modes: list[Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany", "ReadOnlyMany"]] = field(
        default=["ReadWriteOnce"], minItems=1, maxItems=4)
    claim_name: str | None = field("Existing claim shared by all replicas instead of one claim per replica; "
                                   "use a ReadWriteMany claim when replicas > 1.", None, minLength=1, maxLength=253)


class SlotStorage(SpecModel):
    """Slot (KV/prompt cache) persistence for warm restarts."""

    enabled: bool = field("Give each replica a volume for /slots/save files.", False)
    size: Quantity = field("Volume size.", "2Gi", rules=(immutable("spec.storage.slots.size"),))
    storage_class_name: str | None = field("StorageClass of the slot claims.", None, maxLength=253,
                                           rules=(immutable("spec.storage.slots.storageClassName"),))
    restore_on_start: bool = field("Save every slot on shutdown and restore them at start-up (--slot-persist).",
                                   False)

    rules = (Rule("spec.storage.slots.restoreOnStart needs spec.storage.slots.enabled: true",
                  "!has(self.restoreOnStart) || !self.restoreOnStart || (has(self.enabled) && self.enabled)",
                  lambda s: not s.restore_on_start or s.enabled),)


class Retention(SpecModel):
    """What happens to the per-replica claims (StatefulSet persistentVolumeClaimRetentionPolicy)."""

    when_deleted: Literal["Retain", "Delete"] = field("When the LlamaServer is deleted.", "Retain")
    when_scaled: Literal["Retain", "Delete"] = field("When replicas are scaled down.", "Retain")


class Storage(SpecModel):
    """Volumes for the model cache and for saved slots (prompt caches)."""

    model: ModelStorage = field(default=ModelStorage, rules=(immutable("spec.storage.model"),))
    # Cheap rules (CEL cost is estimated from maxLength/maxItems): restoreOnStart may still change.
    slots: SlotStorage = field(default=SlotStorage, rules=(Rule(
        "spec.storage.slots.enabled/size/storageClassName: " + _CLAIMS_IMMUTABLE,
        "(has(self.enabled) && self.enabled) == (has(oldSelf.enabled) && oldSelf.enabled) && "
        "has(self.size) == has(oldSelf.size) && has(self.storageClassName) == has(oldSelf.storageClassName)"),))
    retention: Retention = field(default=Retention)
