"""A coding agent that fixes a real bug in the bundled tinycsv package, on any substrate.

think (plan) -> debug (run its tests: a real failure) -> search (its docs) -> think (the patch)
-> debug (tests pass) -> answer. In real time the debug and search steps run the real tools
(a sandboxed pytest in a temporary copy of the package, an SQLite FTS5 index of its docs); in
virtual time they run their emulated twins. The patch step's text is scripted (a language model
is out of scope here) on every substrate: emulated engines generate it through their content
source, other substrates are wrapped so that only the text is replaced and timing stays theirs.

Run: python examples/coding_agent.py [--substrate wse3] [--virtual] [--seed N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from agentrt import (
    Agent,
    InferenceRequest,
    InferenceResult,
    Plan,
    RunResult,
    Step,
    Substrate,
    Tool,
    VirtualClock,
    run,
)
from agentrt.log import configure_logging
from agentrt.registry import default_registry
from agentrt.render import print_report, print_run, print_waterfall

PROJECT = Path(__file__).resolve().parent / "projects" / "tinycsv"
FAILING = [
    "tests/test_tinycsv.py::test_trailing_separator_keeps_an_empty_last_field",
    "tests/test_tinycsv.py::test_round_trip",
]
# What the model writes in the patch step: the whole fixed module (a whole-file edit).
FIXED_MODULE = '''"""tinycsv: split and join delimited records."""

from __future__ import annotations

__all__ = ["join_record", "split_record"]


def split_record(line: str, sep: str = ",") -> list[str]:
    """Split one record into fields; a trailing separator means an empty last field."""
    line = line.rstrip("\\n")
    return [f.strip() for f in line.split(sep)]


def join_record(fields: list[str], sep: str = ",") -> str:
    """Join fields into one record; the inverse of `split_record`."""
    return sep.join(fields)
'''
SCRIPT = {"patch": FIXED_MODULE}
# The package's tests need no pytest plugins; not loading the ones installed here saves ~1 s.
FAST_PYTEST = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def build_plan(workdir: str | Path) -> Plan:
    """The coding agent's plan, working on the package copy in ``workdir``."""
    where = str(workdir)
    return Plan(
        name="fix-bug",
        description="Fix the failing tests of tinycsv.",
        defaults={"timeout_s": 120, "retry": {"max_attempts": 2, "initial_backoff_s": 0.2}},
        steps=[
            Step(
                id="plan",
                kind="think",
                max_output_tokens=120,
                prompt_tokens=900,
                prompt="Read the failing tests of tinycsv and plan a fix.",
            ),
            Step(
                id="run-tests",
                kind="debug",
                tool="debug",
                depends_on=["plan"],
                prompt="Run the tests to see the failure.",
                args={"pytest": "tests/", "workdir": where},
            ),
            Step(
                id="search-docs",
                kind="search",
                tool="search",
                depends_on=["run-tests"],
                prompt="Search the docs for the rule the failing test checks.",
                args={"query": "trailing separator empty field", "k": 3},
            ),
            Step(
                id="patch",
                kind="think",
                depends_on=["run-tests", "search-docs"],
                max_output_tokens=400,
                prompt_tokens=2500,
                prompt="Failures:\n{{ run-tests }}\n\nDocs:\n{{ search-docs }}\n\n"
                "Write the fixed tinycsv/__init__.py.",
            ),
            Step(
                id="re-test",
                kind="debug",
                tool="debug",
                depends_on=["patch"],
                prompt="Apply the patch and run the tests again.",
                args={
                    "pytest": "tests/",
                    "workdir": where,
                    "files": {"tinycsv/__init__.py": "{{ patch.text }}"},
                },
            ),
            Step(
                id="answer",
                kind="answer",
                depends_on=["re-test"],
                max_output_tokens=80,
                prompt="Summarise the fix and the test result: {{ re-test }}",
            ),
        ],
    )


def copy_project(into: str | Path | None = None) -> Path:
    """A fresh temporary copy of the bundled package (the agent edits the copy only)."""
    root = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="agentrt-tinycsv-"))
    target = root / "tinycsv"
    shutil.copytree(PROJECT, target, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return target


def make_tools(*, virtual: bool, seed: int | None = None) -> list[Tool]:
    """The real debug and search tools, or their emulated twins for virtual time."""
    from tools.debug import DebugOutcome, DebugTool, DebugTwin
    from tools.search import SearchTool, SearchTwin

    if virtual:
        debug_script = {"tests/": [DebugOutcome(failing=FAILING, passed=2), DebugOutcome(passed=4)]}
        hits = [
            {
                "path": "docs/format.md",
                "title": "The tinycsv record format",
                "snippet": "A trailing separator means the last field is empty",
            }
        ]
        return [
            DebugTwin(script=debug_script, seed=seed),
            SearchTwin(script={"trailing": hits}, corpus_docs=3, seed=seed),
        ]
    return [DebugTool(), SearchTool(PROJECT)]


class ScriptedText:
    """Wraps any substrate: the scripted steps get their scripted text, timing stays the inner's."""

    def __init__(self, inner: Substrate, script: dict[str, str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.model = getattr(inner, "model", inner.name)
        self.script = script

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        result = await self.inner.infer(request)
        text = self.script.get(request.step_id or "")
        return result if text is None else result.model_copy(update={"text": text})

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_substrate(name: str, *, seed: int | None = None, **options: Any) -> Substrate:
    """A registered substrate whose patch step answers with the scripted fix."""
    registry = default_registry()
    if name in ("wse3", "h100", "h200", "b200"):
        from substrates.emulated.content import ScriptedContent

        return registry.substrate(name, seed=seed, content=ScriptedContent(SCRIPT), **options)
    return ScriptedText(registry.substrate(name, seed=seed, **options), SCRIPT)


async def run_coding_agent(
    substrate: Substrate,
    *,
    virtual: bool,
    workdir: Path,
    seed: int | None = None,
    tracer_provider: Any = None,
) -> RunResult:
    """Run the coding agent once; in real time it edits and tests the copy in ``workdir``."""
    agent = Agent(
        substrate,
        tools=make_tools(virtual=virtual, seed=seed),
        name="coding-agent",
        seed=seed,
        tracer_provider=tracer_provider,
    )
    return await agent.run(build_plan(workdir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fix the bug in tinycsv with an agent.")
    parser.add_argument("--substrate", default="wse3")
    parser.add_argument("--model", default=None, help="for emulated engines")
    parser.add_argument("--virtual", action="store_true", help="virtual time: tools are twins")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    options = {"model": args.model} if args.model else {}
    substrate = make_substrate(args.substrate, seed=args.seed, **options)
    workdir = copy_project()
    try:
        result = run(
            lambda: run_coding_agent(
                substrate, virtual=args.virtual, workdir=workdir, seed=args.seed
            ),
            clock=VirtualClock() if args.virtual else None,
        )
    finally:
        shutil.rmtree(workdir.parent, ignore_errors=True)
    from agentrt.render import terminal_console
    from agentrt.report import from_run

    console = terminal_console(piped_width=140)
    print_run(console, result)
    report = from_run(result)
    print_report(console, report)
    print_waterfall(console, report)
    print(result.step("re-test").tool_output or "", file=sys.stderr)
    return 0 if result.status == "succeeded" and result.step("re-test").tool_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
