"""The README's code must run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_library_example_runs_and_prints_what_it_says() -> None:
    blocks = python_blocks()
    assert blocks, "README has no python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 15
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, str(README), "exec"), {})
    printed = out.getvalue().strip().splitlines()[-1]
    claimed = re.search(r"# (\w+ [\d.]+)", example)
    assert claimed is not None
    assert printed == claimed.group(1)


def test_the_plan_format_in_the_readme_is_valid() -> None:
    from agentrt import Plan

    block = re.search(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
    assert block is not None
    plan = Plan.from_yaml(block.group(1))
    assert plan.order == ("plan", "run-tests")
    assert plan.step("run-tests").optional
