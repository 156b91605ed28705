"""The names of a server pod's containers: the builders make them, the status and the model cache read them.

A leaf module (no imports), so that `status` and `model_cache` need not import the builders.
"""

SERVER_CONTAINER = "server"
#: Init containers: the model's download, then the multimodal projector's, then each LoRA adapter's
#: (fetch-lora-0, fetch-lora-1, ...; status.py reads them all).
FETCH_MODEL = "fetch-model"
FETCH_MMPROJ = "fetch-mmproj"
FETCH_LORA_PREFIX = "fetch-lora-"
#: Runs first when spec.apiKeySecretRef is set: it only references the key (an env var), so that a missing
#: Secret or key is a CreateContainerConfigError in the pod's status (the operator may not read Secrets).
CHECK_API_KEY = "check-api-key"


def fetch_lora(index: int) -> str:
    """The name of the init container that downloads LoRA adapter `index`."""
    return f"{FETCH_LORA_PREFIX}{index}"
