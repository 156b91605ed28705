"""The operator's own limits on what a LlamaServer may ask for (cluster admins set them: `config`)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from .config import OperatorConfig
from .api import LlamaServerSpec


def allowed(value: str, patterns: tuple[str, ...]) -> bool:
    """Whether `value` matches one of the glob `patterns` (`*` matches any characters, `/` and `:` too); an
    empty list allows everything."""
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def policy_problems(spec: LlamaServerSpec, config: OperatorConfig) -> list[str]:
    """What the spec asks for that the operator's allow-lists refuse, as messages; [] when fine."""
    out = []
    image = spec.image
    if image and not allowed(image, config.allowed_images):
        out.append(f"spec.image {image!r} is not allowed by the operator (allowed: "
                   f"{', '.join(config.allowed_images)}): use one of those, or unset it for the default image")
    account = spec.service_account_name
    if account and not allowed(account, config.allowed_service_accounts):
        out.append(f"spec.serviceAccountName {account!r} is not allowed by the operator (allowed: "
                   f"{', '.join(config.allowed_service_accounts)}): use one of those, or unset it (the pods "
                   "then run without a service account token)")
    return out
