"""A run's directories: private and working (made, copied, filled), and pytest's config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agentrt.errors import ToolError
from tools.debug.args import MIB, DebugArgs

__all__ = ["prepare_workdir", "pytest_config"]

_MAX_COPY_BYTES = 256 * MIB
_COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".hg", ".svn", ".venv", "venv", "node_modules", ".tox", "__pycache__", "*.pyc",
    ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis",
)  # fmt: skip
# Config files pytest would look for, and the section that makes a file count (None: any).
_PYTEST_CONFIGS = (
    ("pytest.toml", None), (".pytest.toml", None), ("pytest.ini", None), (".pytest.ini", None),
    ("pyproject.toml", "[tool.pytest"), ("tox.ini", "[pytest]"), ("setup.cfg", "[tool:pytest]"),
)  # fmt: skip


def prepare_workdir(args: DebugArgs, private: Path) -> Path:
    """Make the private directories and the working directory; write ``files``."""
    # scratch: the tmpfs mount point; out: where pytest writes its report.
    for sub in ("home", "tmp", "scratch", "out"):
        (private / sub).mkdir()
    if args.workdir is not None:
        workdir = Path(args.workdir).resolve()
        if not workdir.is_dir():
            raise ToolError(f"workdir {args.workdir!r} is not a directory")
    elif args.copy_from is not None:
        source = Path(args.copy_from).resolve()
        if not source.is_dir():
            raise ToolError(f"copy_from {args.copy_from!r} is not a directory")
        workdir = private / "work"
        copied = 0

        def copy(src: str, dst: str) -> None:
            nonlocal copied
            copied += os.path.getsize(src)
            if copied > _MAX_COPY_BYTES:
                raise ToolError(
                    f"copy_from {args.copy_from!r} holds more than {_MAX_COPY_BYTES // MIB} MiB; "
                    "copy a smaller directory (the project, not its parent)"
                )
            shutil.copy2(src, dst)

        shutil.copytree(source, workdir, symlinks=True, ignore=_COPY_IGNORE, copy_function=copy)
    else:
        workdir = private / "work"
        workdir.mkdir()
    for name, text in args.files.items():
        path = workdir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return workdir


def pytest_config(workdir: Path, private: Path) -> Path:
    """The workdir's own pytest config, or an empty one so no parent directory's applies."""
    for name, section in _PYTEST_CONFIGS:
        path = workdir / name
        if path.is_file() and (section is None or section in path.read_text(errors="replace")):
            return path
    empty = private / "out" / "pytest.ini"  # out/ is what the sandbox sees of the private dir
    empty.write_text("[pytest]\n")
    return empty
