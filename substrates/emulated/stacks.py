"""Serving stacks at build time: which stack a deployment uses and what it turns on.

`resolve_stack` picks the stack named (checked against the hardware) or the hardware's
default; `stack_spec_decode` is the speculative decoding the stack ships for a model;
`parse_spec_option` reads ``--spec-decode`` (absent = the stack's, ``off`` = none).
"""

from __future__ import annotations

from typing import Literal

from agentrt.errors import ConfigError
from substrates.emulated.deployment import SpecDecode, base_stack
from substrates.emulated.profiles import (
    ContentKind,
    HardwareProfile,
    ModelProfile,
    ProfileCatalog,
    StackProfile,
    load_catalog,
)

__all__ = [
    "default_spec_decode",
    "forced_spec_decode",
    "parse_content_kind",
    "parse_spec_option",
    "resolve_stack",
    "stack_spec_decode",
]


def default_spec_decode(
    stack: StackProfile,
    model: ModelProfile,
    content: ContentKind | None = None,
    draft_model: ModelProfile | None = None,
    *,
    force: bool = False,
) -> SpecDecode | None:
    """The speculative decoding ``stack`` ships for ``model`` on ``content``, or None.

    A stack whose speculation is not ``enabled`` out of the box gives None unless ``force``
    (``--spec-decode on``).

    Args:
        stack: the serving stack.
        model: the target model.
        content: the kind of text generated (``chat``, ``code``, ``reasoning``); it picks the
            acceptance rate (``chat``'s when the stack gives none for it). Default: the
            model's own (``reasoning`` for models that think aloud).
        draft_model: the draft's profile when the stack drafts with a separate model.
        force: give the stack's draft even if the stack does not enable it by default.

    Returns:
        The configuration, or None when the stack does not speculate on this model.
    """
    if content is None:
        content = model.content
    spec = stack.speculation
    if spec is None or not (spec.enabled or force):
        return None
    draft = spec.draft
    if model.is_moe and not spec.moe:
        return None
    if spec.models:
        names = {model.name.lower(), *(a.lower() for a in model.aliases)}
        kinds = [kind for name, kind in spec.models.items() if name.lower() in names]
        if not kinds:
            return None
        draft = kinds[0]
    if draft == "model" and draft_model is None:
        raise ConfigError(f"stack {stack.name!r} drafts with {spec.draft_model}: pass its profile")
    return SpecDecode(
        draft_tokens=spec.draft_tokens,
        acceptance_rate=spec.acceptance.get(content, spec.acceptance["chat"]),
        draft=draft,
        draft_model=draft_model if draft == "model" else None,
    )


def resolve_stack(
    hardware: HardwareProfile, name: str | None, catalog: ProfileCatalog | None = None
) -> StackProfile:
    """The stack named (checked against ``hardware``), or the hardware's default.

    Raises:
        UnknownNameError: no such stack; the message lists those for ``hardware``.
        ConfigError: the stack runs on other hardware.
    """
    profiles = catalog or load_catalog()
    if name:
        return profiles.get_stack(name, hardware)
    if hardware.default_stack:
        return profiles.get_stack(hardware.default_stack, hardware)
    return base_stack(hardware)


def stack_spec_decode(
    stack: StackProfile,
    model: ModelProfile,
    content: ContentKind | None = None,
    catalog: ProfileCatalog | None = None,
    *,
    force: bool = False,
) -> SpecDecode | None:
    """The speculation ``stack`` ships for ``model`` (its draft model looked up), or None.

    ``force`` turns on a draft the stack ships but does not enable by default.
    """
    spec = stack.speculation
    draft = None
    if spec is not None and spec.draft_model is not None:
        draft = (catalog or load_catalog()).get_model(spec.draft_model)
    return default_spec_decode(stack, model, content, draft, force=force)


def forced_spec_decode(
    stack: StackProfile,
    model: ModelProfile,
    content: ContentKind | None,
    catalog: ProfileCatalog | None = None,
) -> SpecDecode:
    """``--spec-decode on``: the stack's draft for ``model``, enabled or not by default.

    Raises:
        ConfigError: the stack ships no draft for this model (the message says what to pass).
    """
    spec = stack_spec_decode(stack, model, content, catalog, force=True)
    if spec is None:
        raise ConfigError(
            f"--spec-decode on: stack {stack.name!r} ships no draft for {model.name}; give one "
            "as DRAFT:ACCEPT[:eagle|mtp|MODEL], e.g. 3:0.7:eagle"
        )
    return spec


_CONTENT_KINDS: tuple[ContentKind, ...] = ("chat", "code", "reasoning")


def parse_content_kind(text: str) -> ContentKind:
    """``chat``, ``code`` or ``reasoning`` (what the acceptance rate of a draft depends on).

    Raises:
        ConfigError: another word.
    """
    for kind in _CONTENT_KINDS:
        if text.strip().lower() == kind:
            return kind
    raise ConfigError(f"spec_content must be one of {', '.join(_CONTENT_KINDS)}, got {text!r}")


def parse_spec_option(
    text: str | None,
    stack: StackProfile,
    model: ModelProfile,
    content: ContentKind | None,
    catalog: ProfileCatalog,
) -> SpecDecode | Literal["stack"] | None:
    """``--spec-decode``: absent = the stack's default, ``off`` = none, ``on``, or ``K:A[:DRAFT]``.

    ``on`` is the stack's draft for the model even where the stack leaves it off by default.
    """
    if text is None or not text.strip():
        return "stack"
    if text.strip().lower() in ("off", "none", "0"):
        return None
    if text.strip().lower() == "on":
        return forced_spec_decode(stack, model, content, catalog)
    parts = text.split(":")
    draft = None
    if len(parts) == 3 and parts[2].strip().lower() not in ("eagle", "mtp", "model"):
        draft = catalog.get_model(parts[2].strip())
        text = ":".join(parts[:2])
    return SpecDecode.parse(text, draft_model=draft)
