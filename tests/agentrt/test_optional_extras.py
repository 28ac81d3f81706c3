"""A plain install (no extras): the commands that need no optional package work, and one that
does says which extra to install, instead of failing or warning on every command.

The optional packages are hidden from a subprocess by a meta-path finder, as if uninstalled.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HIDE = ("httpx", "starlette", "uvicorn", "numpy", "matplotlib", "opentelemetry.sdk")
SCRIPT = f"""
import sys
HIDDEN = {HIDE!r}

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HIDDEN):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Uninstalled())
from agentrt.cli import main
sys.argv = ["agentrt", *sys.argv[1:]]
main()
"""


def agentrt_plain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip


def test_a_command_that_needs_an_extra_names_it_and_nothing_else_warns() -> None:
    served = agentrt_plain("serve", "--substrate", "wse3")
    assert served.returncode == 2
    assert "needs the package 'httpx'" in served.stderr
    assert "pip install 'agentrt[serve]'" in served.stderr
    predicted = agentrt_plain("predict", "-s", "wse3", "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert "warning" not in predicted.stderr


def test_runs_fleets_and_the_slo_gate_need_no_extra() -> None:
    plan = str(ROOT / "examples" / "plans" / "research.yaml")
    ran = agentrt_plain("run", plan, "-s", "wse3", "--virtual")
    assert ran.returncode == 0, ran.stderr
    checked = agentrt_plain("check", str(ROOT / "examples" / "fleets" / "check-small.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "11 of 11 targets met" in checked.stdout
