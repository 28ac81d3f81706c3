"""Shared bits of the benchmarks: quiet logging, an instant substrate, table printing."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from agentrt import InferenceRequest, InferenceResult, Plan, Step, Timing, Usage
from agentrt.log import configure_logging


def logging_off() -> None:
    """Logging off, as the CLI's ``--log-level off`` sets it."""
    configure_logging(level="off")


class InstantSubstrate:
    """Returns a prebuilt result without yielding: isolates the runtime's own cost."""

    name = "instant"

    def __init__(self) -> None:
        self._result = InferenceResult(
            text="ok",
            usage=Usage(input_tokens=8, output_tokens=1),
            timing=Timing(),
            substrate=self.name,
            model="instant",
        )

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        return self._result

    async def aclose(self) -> None:
        return None


def chain(n: int, name: str = "chain") -> Plan:
    """A plan of ``n`` sequential think steps."""
    return Plan(
        name=name,
        steps=[Step(id=f"s{i}", depends_on=[f"s{i - 1}"] if i else []) for i in range(n)],
    )


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(
        f"[dim]{platform.python_implementation()} {platform.python_version()} · "
        f"{platform.machine()} · {os.cpu_count()} cores · load average {load}[/]"
    )
