"""A real-time journaled run, for test_journal_kill.py to kill -9 and resume.

Usage: python journal_driver.py JOURNAL RUN_ID EXEC_LOG EFFECTS plan|chat

``plan`` runs a 16-step plan; ``chat`` a tool-calling conversation of 6 turns, two tool calls
each. Prints ``ready`` once it is about to run, then (if not killed) the steps' outputs and the
answer as JSON. Every model and tool call is logged to EXEC_LOG (fsynced) before it starts:
``PID KIND STEP KEY``. The ``effect`` tool appends ``KEY OUTPUT`` to EFFECTS unless a line with
its idempotency key is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from agentrt import (
    Agent,
    InferenceRequest,
    InferenceResult,
    Plan,
    Step,
    Timing,
    ToolCall,
    Usage,
    idempotency_key,
)
from agentrt.journal import Journal
from agentrt.testing import FunctionSubstrate, FunctionTool

STEPS = 16
TURNS = 6
SLEEP_S = 0.012


def plan() -> Plan:
    """16 steps, two chains that meet every third step, each a model call then the effect tool."""
    steps = []
    for i in range(STEPS):
        deps = [f"s{i - 2}"] if i >= 2 else []
        if i >= 3 and i % 3 == 0:
            deps.append(f"s{i - 1}")
        refs = " ".join(f"{{{{ {d} }}}}" for d in deps)
        steps.append(
            Step(
                id=f"s{i}",
                prompt=f"step {i} after: {refs}",
                depends_on=tuple(deps),
                tool="effect",
                args={"x": f"s{i}", "seen": refs},
            )
        )
    return Plan(name="kill-test", steps=tuple(steps))


def log(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def record_once(path: Path, key: str, output: str) -> None:
    """Append ``KEY OUTPUT`` to ``path`` unless a line with that key is there already."""
    done = path.read_text().splitlines() if path.exists() else []
    if not any(line.split(" ", 1)[0] == key for line in done):
        log(path, f"{key} {output}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def chat_reply(request: InferenceRequest) -> InferenceResult:
    """Turn N of the conversation: two tool calls fed the conversation so far; then the answer."""
    turn = 1 + sum(m.role == "assistant" for m in request.messages)
    seen = _digest("|".join(m.content for m in request.messages))
    calls = (
        tuple(
            ToolCall(
                id=f"c{turn}-{k}",
                name="effect",
                arguments=json.dumps({"x": f"t{turn}-{k}", "seen": seen}),
            )
            for k in (1, 2)
        )
        if turn <= TURNS
        else ()
    )
    return InferenceResult(
        text="" if calls else f"answer {seen}",
        usage=Usage(input_tokens=10, output_tokens=5),
        timing=Timing.build(output_tokens=5),
        substrate="driver",
        model="driver",
        finish_reason="tool_calls" if calls else "stop",
        tool_calls=calls,
    )


def main() -> None:
    journal_path, run_id, exec_log, effects, mode = sys.argv[1:6]
    exec_path, effects_path = Path(exec_log), Path(effects)
    pid = os.getpid()

    async def model(request: InferenceRequest) -> str | InferenceResult:
        log(exec_path, f"{pid} model {request.step_id} -")
        await anyio.sleep(SLEEP_S)
        if mode == "chat":
            return chat_reply(request)
        return f"{request.step_id}:{_digest(request.prompt_text)}"

    async def effect(args: Any) -> str:
        key = idempotency_key()
        assert key is not None
        log(exec_path, f"{pid} tool {key.rpartition(':')[2]} {key}")
        await anyio.sleep(SLEEP_S)
        output = f"did {args.x} after {_digest(args.seen)}"
        record_once(effects_path, key, output)
        return output

    with Journal(journal_path) as journal:
        agent = Agent(
            FunctionSubstrate(model), tools=[FunctionTool("effect", effect)], journal=journal
        )
        print("ready", flush=True)
        target = plan() if mode == "plan" else "Do the six chores."
        result = anyio.run(lambda: agent.run(target, run_id=run_id))
    steps = [[s.id, s.status, s.text, s.tool_output] for s in result.steps]
    print(json.dumps([*steps, ["output", result.status, result.output, None]]), flush=True)


if __name__ == "__main__":
    main()
