"""Every fenced example in README.md and docs/*.md runs, so the docs cannot rot.

* ```python blocks run in-process, in virtual time unless they talk to a real server, with top-level
  ``await`` allowed. Names a snippet takes as given (``agent``, ``plan``, ...) come from `SETUP`;
  `CHECKS` then asserts what the snippet's prose promises. ``print(x)  # text`` and
  ``expression  # literal`` comments are asserted: the printed line starts with ``text`` (``...``
  ends a prefix), the expression equals the literal.
* ```bash / ```console blocks and ``$ `` lines of plain blocks: each ``agentrt ...`` command runs in
  a subprocess with this venv's ``agentrt``. A usage line with placeholders (``PLAN``, ``[--json]``)
  is checked against ``--help`` (the subcommand exists and takes every flag shown), then run with
  its placeholders filled in from `USAGE_VALUES` where there is a natural value.
  ``agentrt serve`` is started and stopped once ``/health`` answers. Output shown after a ``$``
  command is compared with what it prints. Anything else must be in `ALLOWED`, with the reason.
* ```yaml and ```toml blocks are parsed and checked where they are used.

Known failures in docs other engineers are fixing are listed in `KNOWN_BROKEN` (non-strict xfail,
so they pass silently once fixed; remove them then).
"""

from __future__ import annotations

import ast
import contextlib
import http.server
import inspect
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import agentrt

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
AGENTRT = str(Path(sys.executable).with_name("agentrt"))


@dataclass(frozen=True)
class Block:
    """One fenced block of a doc."""

    doc: str
    line: int
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def fenced_blocks() -> list[Block]:
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        start: int | None = None
        lang = ""
        for number, line in enumerate(lines, 1):
            if not line.startswith("```"):
                continue
            if start is None:
                start, lang = number, line[3:].strip()
            else:
                body = "\n".join(lines[start : number - 1]) + "\n"
                found.append(Block(path.name, start, lang, body))
                start = None
    return found


BLOCKS = fenced_blocks()


def of(lang: str) -> list[Block]:
    return [b for b in BLOCKS if b.lang == lang]


def param(block: Block) -> Any:
    reason = KNOWN_BROKEN.get(block.id)
    marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
    return pytest.param(block, id=block.id, marks=marks)


#: Blocks that fail today, in docs owned by others (see issue 12); each with what is wrong.
KNOWN_BROKEN: dict[str, str] = {
}

# -- python ----------------------------------------------------------------------------------

_PLAN = """
from agentrt import Agent, Plan, Step, VirtualClock
from agentrt.testing import FixedLatencySubstrate
plan = Plan(name="p", steps=[Step(id="a"), Step(id="b", depends_on=["a"]),
                             Step(id="answer", kind="answer", depends_on=["b"])])
"""


def _python_block(doc: str, needle: str) -> str:
    return next(b.text for b in BLOCKS if b.lang == "python" and b.doc == doc and needle in b.text)


#: Names a snippet takes as given, keyed by (doc, a line of the snippet).
SETUP: dict[tuple[str, str], str] = {
    ("plugins.md", "def test_my_engine"): _python_block("plugins.md", "class MyEngine:"),
    ("agent-loop.md", "result = await agent.run(plan)"): _PLAN
    + """
agent = Agent(FixedLatencySubstrate(latency_s=0.1))
class ThreeSteps:
    name = "three-steps"
    async def next_steps(self, state):
        if len(state.results) >= 3:
            return [Step(id="answer", kind="answer")]
        return [Step(id=f"s{len(state.results)}")]
policy = ThreeSteps()
""",
    ("agent-loop.md", "prepared = agent.prepare(plan)"): _PLAN
    + """
import anyio
agent = Agent(FixedLatencySubstrate(latency_s=3.0))   # 'b' is in flight at t = 5 s
""",
    ("http.md", "OpenAIHTTPSubstrate("): _PLAN,
    ("tools.md", "twin = DebugTwin("): "from tools import DebugOutcome, DebugTwin\n",
    ("tracing.md", 'configure("otlp")'): """
from agentrt import Agent
from agentrt.testing import FixedLatencySubstrate
substrate = FixedLatencySubstrate(latency_s=0.1)
""",
}

#: What the prose around a snippet promises, asserted after it ran (namespace ``ns``).
CHECKS: dict[tuple[str, str], str] = {
    ("agent-loop.md", "result = await agent.run(plan)"): """
assert result.status == "succeeded", result.error
assert [s.id for s in result.steps] == ["s0", "s1", "s2", "answer"]
""",
    ("agent-loop.md", "prepared = agent.prepare(plan)"): """
assert partial.status == "cancelled"
assert [s.status for s in partial.steps] == ["succeeded", "cancelled", "skipped"]
""",
    ("fleets.md", "router = Router("): """
import agentrt
from agentrt import Plan, Step
plan = Plan(name="p", steps=[Step(id="think"), Step(id="answer", kind="answer",
                                                   depends_on=["think"])])
result = agentrt.run(agent.run, plan, clock=agentrt.VirtualClock())
assert result.status == "succeeded", result.error
assert result.step("answer").substrate == "wse3" and result.step("think").substrate == "h100"
""",
    ("fleets.md", "flaky = FaultInjector("): "assert flaky.name",
    ("plugins.md", "class MyEngine:"): """
import agentrt
from agentrt import Agent, Plan, Step
plan = Plan(name="p", steps=[Step(id="answer", kind="answer")])
result = agentrt.run(Agent(MyEngine()).run, plan, clock=agentrt.VirtualClock())
assert result.status == "succeeded", result.error
""",
    ("plugins.md", "class Grep:"): """
import agentrt
result = agentrt.run(Grep().call, GrepArgs(pattern="x"))
assert result.data == {"matches": 3}
""",
    ("scheduler.md", "sched = Scheduler("): "assert record.e2e_s > 0",
    ("http.md", "AsyncOpenAI("): "await client.close()",
    ("http.md", "OpenAIHTTPSubstrate("): 'assert result.status == "succeeded", result.error',
}

#: Snippets that need wall-clock time (a real server, a real tool); the rest run virtual.
REAL_TIME = {
    ("http.md", "OpenAIHTTPSubstrate("),
    ("http.md", "AsyncOpenAI("),
    ("tools.md", "SearchTool("),
    ("tools.md", "DebugTool()"),
    ("tracing.md", 'configure("otlp")'),
}


def keyed(table: dict[tuple[str, str], str] | set[tuple[str, str]], block: Block) -> Any:
    for doc, needle in table:
        if doc == block.doc and needle in block.text:
            return table[doc, needle] if isinstance(table, dict) else True
    return None


def test_every_setup_and_check_names_a_block() -> None:
    for doc, needle in [*SETUP, *CHECKS, *REAL_TIME]:
        assert any(b.doc == doc and needle in b.text for b in of("python")), (doc, needle)
    for block_id in KNOWN_BROKEN:
        assert any(b.id == block_id for b in BLOCKS), f"stale KNOWN_BROKEN entry {block_id}"


class _Recorder(ast.NodeTransformer):
    """``expr  # literal`` lines become assignments, so their values can be compared."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.claims: dict[int, Any] = {}

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        line = self.lines[node.lineno - 1] if node.lineno <= len(self.lines) else ""
        if "#" not in line or isinstance(node.value, ast.Await):
            return node
        if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "print":
            return node
        comment = line.split("#", 1)[1].strip()
        for candidate in (comment, re.split(r":\s|\s\s", comment)[0]):
            if "..." in candidate:  # an illustration, not a value
                continue
            try:
                self.claims[node.lineno] = ast.literal_eval(candidate)
                break
            except (ValueError, SyntaxError):
                continue
        else:
            return node
        target = ast.Subscript(
            value=ast.Name("__values__", ast.Load()),
            slice=ast.Constant(node.lineno),
            ctx=ast.Store(),
        )
        return ast.copy_location(ast.Assign(targets=[target], value=node.value), node)


def printed_claims(source: str) -> list[str]:
    claims = []
    for line in source.splitlines():
        found = re.match(r"\s*print\(.*\)\s*#\s*(.+)$", line)
        if found:
            claims.append(re.split(r"\s\s", found.group(1))[0].strip())
    return claims


def run_snippet(block: Block, *, server_url: str, otlp_url: str, received: list[bytes]) -> None:
    source = block.text.replace("http://localhost:11434/v1", f"{server_url}/v1")
    source = source.replace("http://127.0.0.1:8000/v1", f"{server_url}/v1")
    # The endpoint serves the model it emulates; the doc's name is an Ollama example.
    source = source.replace('"llama3.1:8b"', '"llama-3.1-70b"')
    check = keyed(CHECKS, block) or ""
    tree = ast.parse(f"{source}\n{check}", filename=block.id)
    recorder = _Recorder(source.splitlines())
    tree = ast.fix_missing_locations(recorder.visit(tree))
    code = compile(tree, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    ns: dict[str, Any] = {"__values__": {}, "OTLP_RECEIVED": received}
    exec(keyed(SETUP, block) or "", ns)
    clock = None if keyed(REAL_TIME, block) else agentrt.VirtualClock()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if code.co_flags & inspect.CO_COROUTINE:

            async def body() -> None:
                await eval(code, ns)

            agentrt.run(body, clock=clock)
        else:
            exec(code, ns)
        for name, fn in list(ns.items()):
            if name.startswith("test_") and callable(fn):
                fn()  # a test the doc shows: it must pass
    lines = out.getvalue().splitlines()
    for claim in printed_claims(source):
        prefix = claim.endswith("...")
        wanted = claim.removesuffix("...").rstrip()
        assert any(line.startswith(wanted) if prefix else line == wanted for line in lines), (
            f"{block.id}: the doc says it prints {claim!r}; it printed {lines}"
        )
    for lineno, claimed in recorder.claims.items():
        assert ns["__values__"][lineno] == claimed, (
            f"{block.id}, line {lineno}: the doc says {claimed!r}, got {ns['__values__'][lineno]!r}"
        )


@pytest.mark.parametrize("block", [param(b) for b in of("python")])
def test_python_example_runs(
    block: Block,
    server: str,
    otlp: tuple[str, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    otlp_url, received = otlp
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_url)
    run_snippet(block, server_url=server, otlp_url=otlp_url, received=received)


# -- servers the examples talk to ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_health(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url}/health did not answer in {timeout_s} s")


@contextlib.contextmanager
def serving(argv: list[str]) -> Iterator[str]:
    """Run an ``agentrt serve`` command line; yield its URL once /health answers; stop it."""
    port = free_port()
    argv = list(argv)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    proc = subprocess.Popen(
        [AGENTRT, *argv[1:], "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """The endpoint the docs' client examples talk to: the README's own ``agentrt serve``."""
    with serving(["agentrt", "serve", "--substrate", "wse3", "--model", "llama-3.1-70b"]) as url:
        yield url


@pytest.fixture(scope="module")
def otlp() -> Iterator[tuple[str, list[bytes]]]:
    """A minimal OTLP/HTTP receiver on loopback: accepts POST /v1/traces, keeps the bodies."""
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            received.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- commands --------------------------------------------------------------------------------

#: Commands the tests do not run, by how they start, and why.
ALLOWED = {
    "python3 -m venv": "creates the virtualenv these tests already run in",
    ".venv/bin/pip install": "installs what these tests already run with (and needs the network)",
    ".venv/bin/pytest": "the test suite itself",
    "docker run": "needs Docker and an image download; the OTLP export it receives is tested "
    "against a local receiver instead",
    "python benchmarks/load.py": "35 s of one core; tests/test_benchmarks.py runs it small",
    ".venv/bin/python benchmarks/all_substrates.py": "minutes at --trials 20; "
    "tests/test_benchmarks.py runs it small",
}

#: Words standing for a value in a usage line.
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_.]*(=[A-Z]+)?$")


@dataclass(frozen=True)
class Command:
    block: Block
    argv: tuple[str, ...]
    expected: str  # output shown after a ``$`` line, if any


def commands() -> list[Command]:
    found = []
    plain = [b for b in of("") if b.text.startswith("$ ")]
    for block in of("bash") + of("console") + plain:
        logical: list[tuple[str, list[str]]] = []
        for raw in block.text.splitlines():
            usage_continued = block.lang == "bash" and raw.startswith(" ") and raw.strip()
            if logical and (logical[-1][0].endswith("\\") or usage_continued):
                logical[-1] = (logical[-1][0][:-1] + " " + raw.strip(), logical[-1][1])
            elif block.lang == "console" or block.lang == "":
                if raw.startswith("$ "):
                    logical.append((raw[2:], []))
                elif logical:
                    logical[-1][1].append(raw)
            elif raw.strip() and not raw.lstrip().startswith("#"):
                logical.append((raw, []))
        for line, output in logical:
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    found.append(Command(block, tuple(words), "\n".join(output)))
    return found


def _allowed(argv: tuple[str, ...]) -> str | None:
    line = " ".join(argv)
    return next((why for start, why in ALLOWED.items() if line.startswith(start)), None)


def _is_agentrt(argv: tuple[str, ...]) -> bool:
    return argv[0] in ("agentrt", ".venv/bin/agentrt")


def test_every_command_in_the_docs_is_run_or_allowed_with_a_reason() -> None:
    found = commands()
    assert len(found) >= 20
    for command in found:
        assert _is_agentrt(command.argv) or _allowed(command.argv), (
            f"{command.block.id}: {' '.join(command.argv)!r} is neither an agentrt command "
            "nor in ALLOWED"
        )
    used = {start for start in ALLOWED if any(_allowed(c.argv) for c in found)}
    assert used == set(ALLOWED), f"stale ALLOWED entries: {set(ALLOWED) - used}"


def _without_optional(argv: tuple[str, ...]) -> list[str]:
    """Drop ``[...]`` groups (which may span words) from a usage line."""
    kept, depth = [], 0
    for word in argv:
        opened = depth > 0 or word.startswith("[")
        depth += word.count("[") - word.count("]")
        if not opened:
            kept.append(word)
    return kept


def _yaml_block(doc: str, needle: str) -> str:
    return next(b.text for b in of("yaml") if b.doc == doc and needle in b.text)


def prepare(command: Command, tmp: Path, server: str) -> list[str]:
    """The command line to run here: files the doc assumes, ports, virtual time where said."""
    argv = list(_without_optional(command.argv))
    argv[0] = AGENTRT
    out = []
    for word in argv:
        if word == "plan.yaml":
            word = str(ROOT / "examples" / "plans" / "research.yaml")
        elif word.endswith("fleet.yaml"):
            fleet = tmp / "fleet.yaml"
            fleet.write_text(_yaml_block("fleets.md", "routes:"))
            word = word.replace("fleet.yaml", str(fleet))
        word = word.replace("http://localhost:8000/v1", f"{server}/v1")
        out.append(word)
    if out[1:2] == ["demo"]:
        # The README: "`agentrt demo --virtual` runs the same thing in simulated time".
        out.append("--virtual")
    if "openai_http" in out:
        # The endpoint serves the models it emulates; the doc's model name is a vLLM example.
        out = [re.sub(r"^model=.*", "model=llama-3.1-70b", w) for w in out]
    return out


#: Values for the placeholders of the usage lines that are also run (the rest: --help only).
USAGE_VALUES: dict[str, dict[str, str]] = {
    "run": {"PLAN": str(ROOT / "examples" / "plans" / "research.yaml"), "NAME": "fixed"},
    "report": {},
    "load": {
        "PLAN": str(ROOT / "examples" / "plans" / "research.yaml"),
        "S": "fixed",
        "N": "3",
        "R": "50",
        "FLEET": str(ROOT / "examples" / "fleets" / "canary.yaml"),
    },
    "check": {"SPEC": str(ROOT / "examples" / "fleets" / "check-small.yaml")},
}


def usage_line(argv: list[str]) -> bool:
    return any(_PLACEHOLDER.match(w) for w in argv[1:]) or argv[1:] == []


def command_params() -> list[Any]:
    params = []
    for c in commands():
        if _is_agentrt(c.argv):
            reason = KNOWN_BROKEN.get(f"{c.block.id}:{c.argv[1]}")
            marks = [pytest.mark.xfail(reason=reason, strict=False)] if reason else []
            params.append(pytest.param(c, id=f"{c.block.id}:{' '.join(c.argv[1:3])}", marks=marks))
    return params


@pytest.mark.parametrize("command", command_params())
def test_agentrt_command_in_the_docs_runs(
    command: Command, tmp_path: Path, server: str, otlp: tuple[str, list[bytes]]
) -> None:
    env = {**os.environ, "COLUMNS": "200", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp[0]}
    words = list(_without_optional(command.argv))
    if usage_line(words):
        # A usage line: the subcommand exists and takes every flag it shows.
        sub = [w for w in words[1:2] if not _PLACEHOLDER.match(w)]
        shown = proc = subprocess.run(
            [AGENTRT, *sub, "--help"], capture_output=True, text=True, env=env, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])\b", " ".join(command.argv)):
            assert flag in shown.stdout, f"{command.block.id}: `agentrt {sub[0]}` has no {flag}"
        # Then the usage line itself, its placeholders filled in, where there is a natural value.
        values = USAGE_VALUES.get(words[1])
        if values is None:
            return
        if "TRACE" in words:
            trace = tmp_path / "run.json"
            plan = str(ROOT / "examples" / "plans" / "research.yaml")
            written = [AGENTRT, "run", plan, "-s", "fixed", "--virtual", "--trace"]
            subprocess.run([*written, f"jaeger-json:{trace}"], env=env, timeout=60, check=True)
            values = {**values, "TRACE": str(trace)}
        argv = [AGENTRT, *(values.get(w, w) for w in words[1:])]
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT, check=False
        )
        assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return
    argv = prepare(command, tmp_path, server)
    if argv[1] == "serve":
        with (
            serving(["agentrt", *argv[1:]]) as url,
            urllib.request.urlopen(f"{url}/v1/models", timeout=10) as answer,
        ):
            assert answer.status == 200
        return
    otlp[1].clear()
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT, check=False
    )
    if command.expected.startswith("error:"):
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert " ".join(proc.stderr.split()) == " ".join(command.expected.split())
        return
    assert proc.returncode == 0, f"{' '.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    if command.expected:
        for line in command.expected.splitlines():
            assert " ".join(line.split()) in " ".join(proc.stdout.split()), line
    if "--trace" in argv and argv[argv.index("--trace") + 1] == "otlp":
        assert otlp[1], "the run exported no span to the OTLP endpoint"


# -- data blocks -----------------------------------------------------------------------------


def test_the_fleet_spec_in_the_docs_loads(tmp_path: Path) -> None:
    from substrates import load_route_spec

    path = tmp_path / "fleet.yaml"
    path.write_text(_yaml_block("fleets.md", "routes:"))
    spec = load_route_spec(path)
    assert list(spec.routes) == ["wse3", "h100"]


def test_the_search_twin_script_in_the_docs_loads(tmp_path: Path) -> None:
    from tools.search import make_search_twin

    path = tmp_path / "hits.yaml"
    path.write_text(_yaml_block("tools.md", "backoff:"))
    assert make_search_twin(script=str(path)).name == "search"


def test_every_yaml_and_toml_block_parses() -> None:
    for block in of("yaml"):
        assert yaml.safe_load(block.text), block.id
    for block in of("toml"):
        data = tomllib.loads(block.text)
        assert set(data["project"]["entry-points"]) <= {"agentrt.substrates", "agentrt.tools"}


def test_every_block_is_a_known_kind() -> None:
    kinds = {b.lang for b in BLOCKS}
    assert kinds <= {"", "python", "bash", "console", "yaml", "toml"}, kinds


def test_every_inference_request_field_is_in_the_plugin_docs() -> None:
    text = (ROOT / "docs" / "plugins.md").read_text()
    for name in agentrt.InferenceRequest.model_fields:
        assert f"`{name}`" in text, name


def test_the_calibration_table_in_the_docs_is_current() -> None:
    from substrates.emulated.calibration import calibrate, format_table

    shown = next(
        b.text for b in of("") if b.doc == "performance-model.md" and "scored points:" in b.text
    )
    assert shown.rstrip("\n") == format_table(calibrate())


def test_every_cli_command_is_in_the_readme_command_list() -> None:
    proc = subprocess.run(
        [AGENTRT, "--help"], capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    listed = re.findall(r"^│ (\w[\w-]*) ", proc.stdout, flags=re.M)
    assert "run" in listed
    usage = next(b.text for b in of("bash") if "agentrt run PLAN" in b.text)
    missing = [name for name in listed if f"agentrt {name}" not in usage and name != "demo"]
    assert not missing, f"README's command list lacks {missing}"
