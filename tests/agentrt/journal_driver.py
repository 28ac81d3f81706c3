"""A real-time journaled plan run, for test_journal_kill.py to kill -9 and resume.

Usage: python journal_driver.py JOURNAL RUN_ID EXEC_LOG EFFECTS

Prints ``ready`` once it is about to run, then (if not killed) the steps' outputs as JSON. Every
model and tool call is logged to EXEC_LOG (fsynced) before it starts: ``PID KIND STEP KEY``. The
``effect`` tool appends ``KEY OUTPUT`` to EFFECTS unless a line with its idempotency key is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from agentrt import Agent, InferenceRequest, Plan, Step, idempotency_key
from agentrt.journal import Journal
from agentrt.testing import FunctionSubstrate, FunctionTool

STEPS = 16
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


def main() -> None:
    journal_path, run_id, exec_log, effects = sys.argv[1:5]
    exec_path, effects_path = Path(exec_log), Path(effects)
    pid = os.getpid()

    async def model(request: InferenceRequest) -> str:
        log(exec_path, f"{pid} model {request.step_id} -")
        await anyio.sleep(SLEEP_S)
        digest = hashlib.sha256(request.prompt_text.encode()).hexdigest()[:12]
        return f"{request.step_id}:{digest}"

    async def effect(args: Any) -> str:
        key = idempotency_key()
        assert key is not None
        log(exec_path, f"{pid} tool {args.x} {key}")
        await anyio.sleep(SLEEP_S)
        output = f"did {args.x} after {hashlib.sha256(args.seen.encode()).hexdigest()[:8]}"
        record_once(effects_path, key, output)
        return output

    with Journal(journal_path) as journal:
        agent = Agent(
            FunctionSubstrate(model), tools=[FunctionTool("effect", effect)], journal=journal
        )
        print("ready", flush=True)
        result = anyio.run(lambda: agent.run(plan(), run_id=run_id))
    steps = [[s.id, s.status, s.text, s.tool_output] for s in result.steps]
    print(json.dumps(steps), flush=True)


if __name__ == "__main__":
    main()
