"""A tool-calling coding agent: the model chooses its tools, and the same run plays everywhere.

The model reads the failing test and runs the tests (two tool calls at once), searches the
package's docs, writes the fix, runs the tests again and answers. The tools are real: a file
reader and writer confined to a temporary copy of the bundled tinycsv package
(`@function_tool`), a sandboxed pytest (`tools.debug`) and an SQLite index of the docs
(`tools.search`). A language model is out of scope here, so the model's side is scripted; the
script is the conversation a model would have, tool calls included.

Three ways to run it, each fixing the package for real:

    python examples/tool_agent.py                          # the scripted model, in process
    python examples/tool_agent.py --serve                  # agentrt's loop over openai_http
    python examples/tool_agent.py --framework pydantic-ai  # a PydanticAI agent, unchanged

``--serve`` and ``--framework`` first record the scripted run's trajectory, then start
``agentrt serve`` in process on an emulated wafer (``wse3``) that plays it: every reply, tool
call and token count is the recorded one, timed by the engine for the real prompt. The agent on
the other side (agentrt's own, or PydanticAI's through its OpenAI model) only sees an
OpenAI-compatible endpoint. ``--record FILE`` keeps a trajectory (with ``--serve``, the run
recorded through ``openai_http`` against the endpoint; otherwise the scripted run's); then
compare substrates:

    agentrt replay FILE --substrates wse3,h100
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coding_agent import FIXED_MODULE, PROJECT, copy_project  # the demo's package and its fix

from agentrt import Agent, RunResult, Substrate, Tool, function_tool, run
from agentrt.log import configure_logging
from agentrt.render import print_run, terminal_console
from agentrt.testing import Reply, ScriptedToolSubstrate
from agentrt.trajectory import TrajectoryRecorder

TASK = "The tests of tinycsv fail. Find out why, fix the package and check that they pass."
INSTRUCTIONS = "You fix Python packages. Use the tools; answer when the tests pass."
ANSWER = (
    "Fixed: split_record dropped the empty last field of a record ending in a separator. "
    "It now keeps it, as docs/format.md says; the tests pass."
)
SCRIPT = [
    Reply(
        "Let me read the failing test and run the suite.",
        ("read_file", {"path": "tests/test_tinycsv.py"}),
        ("run_tests", {"target": "tests/"}),
    ),
    ("search", {"query": "trailing separator empty field", "k": 3}),
    ("write_file", {"path": "tinycsv/__init__.py", "content": FIXED_MODULE}),
    ("run_tests", {"target": "tests/"}),
    ANSWER,
]


def _inside(workdir: Path, path: str) -> Path:
    target = (workdir / path).resolve()
    if workdir.resolve() not in target.parents:
        raise ValueError(f"{path!r} is outside the package; give a path relative to its root")
    return target


def make_functions(workdir: Path) -> dict[str, Any]:
    """The three tools as plain typed functions (PydanticAI takes them as they are)."""
    from tools.debug import DebugArgs, DebugTool

    debug = DebugTool()

    def read_file(path: str) -> str:
        """Read a text file of the package.

        Args:
            path: the file, relative to the package root, e.g. tests/test_tinycsv.py.
        """
        return _inside(workdir, path).read_text(encoding="utf-8")

    def write_file(path: str, content: str) -> str:
        """Replace a text file of the package.

        Args:
            path: the file, relative to the package root.
            content: the file's new text.
        """
        _inside(workdir, path).write_text(content, encoding="utf-8")
        return f"wrote {len(content)} characters to {path}"

    async def run_tests(target: str = "tests/") -> str:
        """Run the package's tests with pytest in a sandbox and report the result.

        Args:
            target: what pytest runs, relative to the package root.
        """
        env = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # no plugins: ~1 s faster
        result = await debug.call(DebugArgs(pytest=target, workdir=str(workdir), env=env))
        return result.output

    return {"read_file": read_file, "write_file": write_file, "run_tests": run_tests}


def make_tools(workdir: Path) -> list[Tool]:
    """The agent's tools: the three functions as function tools, plus the docs search."""
    from tools.search import SearchTool

    tools: list[Tool] = [function_tool(fn) for fn in make_functions(workdir).values()]
    return [*tools, SearchTool(PROJECT)]


def scripted_model() -> ScriptedToolSubstrate:
    """The model's side of the conversation, scripted (50 ms per call)."""
    return ScriptedToolSubstrate(SCRIPT, latency_s=0.05, name="scripted", model="scripted")


async def run_agent(
    substrate: Substrate, workdir: Path, *, record: Path | None = None, max_turns: int = 10
) -> RunResult:
    """Run the coding agent on ``substrate`` against the package copy in ``workdir``."""
    recorder = TrajectoryRecorder(record, agent="tool-agent") if record is not None else None
    agent = Agent(substrate, tools=make_tools(workdir), name="tool-agent", recorder=recorder)
    return await agent.run(TASK, max_turns=max_turns)


@contextmanager
def served(trajectory: Path) -> Iterator[str]:
    """``agentrt serve`` in process: an emulated wse3 playing ``trajectory``; yields its URL."""
    from substrates.emulated import build_engine
    from substrates.http.server import create_app, serve_in_thread

    engine = build_engine("wse3", model="llama-3.1-70b", trajectory=str(trajectory), seed=1)
    with serve_in_thread(create_app(engine)) as url:
        yield url


async def run_over_http(url: str, workdir: Path, *, record: Path | None = None) -> RunResult:
    """agentrt's loop with ``openai_http`` pointed at ``url`` (recorded to ``record``)."""
    from substrates.http.client import OpenAIHTTPSubstrate

    model = OpenAIHTTPSubstrate(f"{url}/v1", "llama-3.1-70b", api_key="unused")
    try:
        return await run_agent(model, workdir, record=record)
    finally:
        await model.aclose()


async def run_pydantic_ai(url: str, workdir: Path) -> str:
    """A PydanticAI agent with the same functions, through its OpenAI model, against ``url``."""
    import openai
    from pydantic_ai import Agent as PydanticAgent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    from tools.search import SearchArgs, SearchTool

    search_tool = SearchTool(PROJECT)

    async def search(query: str, k: int = 5) -> str:
        """Search the package's documentation.

        Args:
            query: words to look for.
            k: how many hits to return.
        """
        return (await search_tool.call(SearchArgs(query=query, k=k))).output

    functions = [*make_functions(workdir).values(), search]
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
        model = OpenAIChatModel("llama-3.1-70b", provider=OpenAIProvider(openai_client=client))
        agent = PydanticAgent(model, instructions=INSTRUCTIONS, tools=functions)
        result = await agent.run(TASK)
    await search_tool.aclose()
    return str(result.output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    way = parser.add_mutually_exclusive_group()
    way.add_argument("--serve", action="store_true", help="Run over HTTP against agentrt serve.")
    way.add_argument(
        "--framework", choices=["pydantic-ai"], help="Run a peer framework's agent against serve."
    )
    parser.add_argument("--record", type=Path, help="Write the run's trajectory here.")
    args = parser.parse_args(argv)
    configure_logging(level="warning")
    console = terminal_console(piped_width=140)
    scratch = Path(tempfile.mkdtemp(prefix="agentrt-tool-agent-"))
    try:
        # The scripted run; over HTTP, the served wafer plays its trajectory, and --record
        # keeps the run against the endpoint (what `agentrt replay` then plays everywhere).
        direct = not (args.serve or args.framework)
        trajectory = scratch / "trajectory.jsonl" if args.serve or not args.record else args.record
        here = copy_project(scratch / "a")
        first = run(lambda: run_agent(scripted_model(), here, record=trajectory))
        if direct:
            print_run(console, first)
            print(f"answer: {first.output}")
            if args.record:
                print(f"trajectory: {args.record}")
                print(f"compare: agentrt replay {args.record} --substrates wse3,h100")
            return 0 if first.status == "succeeded" else 1
        workdir = copy_project(scratch / "b")
        with served(trajectory) as url:
            if args.framework == "pydantic-ai":
                answer = run(lambda: run_pydantic_ai(url, workdir))
                print(f"pydantic-ai against agentrt serve at {url} (wse3 playing the trajectory)")
                print(f"answer: {answer}")
                ok = answer == ANSWER
            else:
                result = run(lambda: run_over_http(url, workdir, record=args.record))
                print_run(console, result)
                print(f"answer: {result.output}")
                ok = result.status == "succeeded"
        fixed = (workdir / "tinycsv" / "__init__.py").read_text(encoding="utf-8") == FIXED_MODULE
        print(f"package fixed: {fixed}")
        return 0 if ok and fixed else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
