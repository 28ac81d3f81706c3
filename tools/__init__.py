"""Built-in agent tools for agentrt."""

from __future__ import annotations

__all__: list[str] = []
