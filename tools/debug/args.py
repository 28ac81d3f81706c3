"""What one ``debug`` call asks for (`DebugArgs`) and the limits it runs under."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["MIB", "DebugArgs", "SandboxLimits"]

#: Bytes in a MiB, the unit of the size limits.
MIB: Final = 1 << 20


class SandboxLimits(BaseModel):
    """Resource limits of one sandboxed run (see ``docs/tools.md`` for how each is enforced).

    Example:
        >>> SandboxLimits(timeout_s=5).memory_mib
        1024
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(default=30.0, gt=0, description="Wall-clock time for the whole run.")
    cpu_s: int = Field(default=20, gt=0, description="CPU seconds per process (RLIMIT_CPU).")
    memory_mib: int = Field(
        default=1024, gt=0, description="Address space per process (RLIMIT_AS)."
    )
    file_size_mib: int = Field(default=64, gt=0, description="Largest file written (RLIMIT_FSIZE).")
    max_processes: int = Field(default=64, gt=0, description="Live processes in the sandbox.")
    max_open_files: int = Field(default=1024, gt=0, description="Descriptors per process.")
    disk_mib: int = Field(
        default=256, gt=0, description="Bytes the whole run may write, all files together."
    )


class DebugArgs(BaseModel):
    """Arguments of the ``debug`` tool: exactly one of ``code``, ``script`` and ``pytest``.

    Example:
        >>> DebugArgs(pytest="tests/test_calc.py", copy_from="examples/calc").target
        'tests/test_calc.py'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str | None = Field(default=None, max_length=100_000, description="Python source to run.")
    script: str | None = Field(default=None, description="A Python file, relative to the workdir.")
    pytest: str | None = Field(
        default=None, description="A pytest target: 'tests/', 'tests/test_x.py::test_y'."
    )
    argv: list[str] = Field(default_factory=list, description="Extra arguments (script, pytest).")
    workdir: str | None = Field(
        default=None, description="Run in this existing directory (what the run writes stays)."
    )
    copy_from: str | None = Field(
        default=None, description="Copy this directory into a fresh temporary one and run there."
    )
    files: dict[str, str] = Field(
        default_factory=dict, description="Files (relative path -> text) written before the run."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    timeout_s: float | None = Field(
        default=None, gt=0, description="Wall-clock limit for the run; default the tool's."
    )
    cpu_s: int | None = Field(default=None, gt=0, description="CPU seconds per process.")
    memory_mib: int | None = Field(default=None, gt=0, description="Memory per process, MiB.")
    file_size_mib: int | None = Field(default=None, gt=0, description="Largest file written, MiB.")
    max_processes: int | None = Field(default=None, gt=0, description="Live processes at most.")
    disk_mib: int | None = Field(default=None, gt=0, description="Bytes all files may take, MiB.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        given = [name for name in ("code", "script", "pytest") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of code, script and pytest (got {', '.join(given) or 'none'})"
            )
        if self.workdir is not None and self.copy_from is not None:
            raise ValueError("give workdir (run in place) or copy_from (run in a copy), not both")
        for name in self.files:
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError(f"files: {name!r} must be a relative path inside the workdir")
        return self

    @property
    def mode(self) -> Literal["code", "script", "pytest"]:
        """Which kind of run this is."""
        if self.code is not None:
            return "code"
        return "script" if self.script is not None else "pytest"

    def effective_limits(self, defaults: SandboxLimits) -> SandboxLimits:
        """``defaults`` with the limits this call sets."""
        overrides = {
            key: value
            for key in SandboxLimits.model_fields
            if (value := getattr(self, key, None)) is not None
        }
        return defaults.model_copy(update=overrides)

    @property
    def target(self) -> str:
        """The script path or pytest target, or ``"<code>"``: the key twins script outcomes by."""
        return self.script or self.pytest or "<code>"
