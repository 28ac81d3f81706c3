"""Reading a twin's script file (YAML or JSON): the one helper both emulated twins share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from agentrt.errors import ConfigError

__all__ = ["read_script"]


def read_script(path: str, twin: str, shape: str) -> Any:
    """A twin's script file (YAML or JSON): a mapping of lists; the twin checks the items."""
    try:
        mapping = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the {twin} script {path!r}: {exc}") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, list) for v in mapping.values()):
        raise ConfigError(f"the {twin} script {path!r} must map {shape}")
    return mapping
