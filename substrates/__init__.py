"""Built-in inference substrates for agentrt: emulated wafer-scale and GPU engines and friends."""

from __future__ import annotations

__all__: list[str] = []
