"""Hardware, model and serving-stack profiles: validated data, lazily loaded from TOML files.

This module finds and loads them (the search path, the TOML files, the cached catalog and
lookups); their schema (pydantic models) is `substrates.emulated.profiles.schema` and
`substrates.emulated.profiles.stack`, re-exported here. The data: ``hardware/*.toml``,
``models/*.toml`` and ``stacks/*.toml`` beside this file.
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError

from agentrt.errors import ConfigError, UnknownNameError
from substrates.emulated.profiles.schema import (
    Efficiency,
    HardwareKind,
    HardwareProfile,
    ModelProfile,
    Precision,
    TokenPrice,
    _Frozen,
)
from substrates.emulated.profiles.stack import ContentKind, DraftKind, Speculation, StackProfile

__all__ = [
    "BUILTIN_PROFILE_DIR",
    "PROFILE_PATH_ENV",
    "ContentKind",
    "DraftKind",
    "Efficiency",
    "HardwareKind",
    "HardwareProfile",
    "ModelProfile",
    "Precision",
    "ProfileCatalog",
    "Speculation",
    "StackProfile",
    "TokenPrice",
    "clear_profile_cache",
    "hardware_names",
    "load_catalog",
    "load_hardware",
    "load_model",
    "load_stack",
    "model_names",
    "profile_search_path",
    "stack_names",
]

#: Environment variable holding extra profile directories, separated by ``os.pathsep``.
PROFILE_PATH_ENV = "AGENTRT_PROFILE_PATH"

#: Where the built-in profiles live (``hardware/*.toml`` and ``models/*.toml``).
BUILTIN_PROFILE_DIR = Path(__file__).resolve().parent


_P = TypeVar("_P", HardwareProfile, ModelProfile, StackProfile)
_Profile = HardwareProfile | ModelProfile | StackProfile
_KINDS: dict[str, type[_Profile]] = {
    "hardware": HardwareProfile,
    "model": ModelProfile,
    "stack": StackProfile,
}


class ProfileCatalog(_Frozen):
    """Every profile found on a search path, by name and alias."""

    hardware: dict[str, HardwareProfile] = Field(description="Hardware profiles by name.")
    models: dict[str, ModelProfile] = Field(description="Model profiles by name.")
    stacks: dict[str, StackProfile] = Field(
        default_factory=dict, description="Serving-stack profiles by name."
    )
    files: dict[str, str] = Field(description="'kind:name' -> the file it was loaded from.")

    def get_hardware(self, name: str) -> HardwareProfile:
        """Look up a hardware profile by name or alias.

        Args:
            name: e.g. ``"h100"``, ``"h100_sxm"`` or ``"wse3"`` (case-insensitive).

        Returns:
            The profile.

        Raises:
            UnknownNameError: no such hardware; the message lists the known names.
        """
        return _lookup("hardware profile", name, self.hardware)

    def get_model(self, name: str) -> ModelProfile:
        """Look up a model profile by name or alias.

        Args:
            name: e.g. ``"llama-3.1-70b"`` (case-insensitive).

        Returns:
            The profile.

        Raises:
            UnknownNameError: no such model; the message lists the known names.
        """
        return _lookup("model profile", name, self.models)

    def get_stack(self, name: str, hardware: HardwareProfile | None = None) -> StackProfile:
        """Look up a serving stack by name or alias, checked against ``hardware`` if given.

        Args:
            name: e.g. ``"cs-current"``, ``"vllm"`` (case-insensitive).
            hardware: the hardware it must run on.

        Returns:
            The stack.

        Raises:
            UnknownNameError: no such stack; the message lists the stacks for ``hardware``
                (or all), with the closest as a suggestion.
            ConfigError: the stack exists but runs on other hardware.
        """
        fitting = sorted(
            n for n, s in self.stacks.items() if hardware is None or s.applies_to(hardware)
        )
        try:
            stack = _lookup("stack", name, self.stacks)
        except UnknownNameError:
            raise UnknownNameError("stack", name, fitting) from None  # did-you-mean among these
        if hardware is not None and not stack.applies_to(hardware):
            where = ", ".join(stack.hardware) or f"{stack.kind} hardware"
            raise ConfigError(
                f"stack {stack.name!r} runs on {where}, not on {hardware.name} "
                f"({hardware.kind}); stacks for {hardware.name}: {', '.join(fitting) or 'none'}"
            )
        return stack

    def stacks_for(self, hardware: HardwareProfile) -> tuple[StackProfile, ...]:
        """Every stack that runs on ``hardware``, by name."""
        return tuple(s for _, s in sorted(self.stacks.items()) if s.applies_to(hardware))


def _lookup(kind: str, name: str, table: Mapping[str, _P]) -> _P:
    key = name.strip().lower()
    if key in table:
        return table[key]
    for profile in table.values():
        if key in (alias.lower() for alias in profile.aliases):
            return profile
    raise UnknownNameError(kind, name, sorted(table))


def profile_search_path(extra: Sequence[str | os.PathLike[str]] = ()) -> tuple[Path, ...]:
    """The directories searched for profiles, highest priority first.

    Order: ``extra`` (as given), then the directories in ``$AGENTRT_PROFILE_PATH``
    (separated by ``os.pathsep``), then the built-in profiles. A profile found earlier shadows
    one of the same name found later, so a user file can re-tune a built-in GPU.

    Args:
        extra: directories to search before the environment's.

    Returns:
        The directories, as absolute paths.
    """
    env = os.environ.get(PROFILE_PATH_ENV, "")
    dirs = [Path(p) for p in extra] + [Path(p) for p in env.split(os.pathsep) if p.strip()]
    return (*(d.expanduser().resolve() for d in dirs), BUILTIN_PROFILE_DIR)


def _profile_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(
            f"profile directory {directory} does not exist; "
            f"fix {PROFILE_PATH_ENV} or the search path you passed"
        )
    files = [*directory.glob("*.toml")]
    for sub in ("hardware", "models", "stacks"):
        files.extend((directory / sub).glob("*.toml"))
    return sorted(files)


def _read_profile(path: Path) -> _Profile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read profile: {exc}") from exc
    kind = data.get("profile")
    cls = _KINDS.get(str(kind))
    if cls is None:
        raise ConfigError(
            f'{path}: field \'profile\' must be "hardware", "model" or "stack", got {kind!r}; '
            'every profile file starts with profile = "hardware", "model" or "stack"'
        )
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(err["loc"], err["msg"]) for err in exc.errors())
        raise ConfigError(f"{path}: invalid {kind} profile: {problems}") from exc


def _describe(loc: tuple[int | str, ...], msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    where = ".".join(str(part) for part in loc)
    return f"field '{where}': {msg}" if where else msg


@functools.lru_cache(maxsize=16)
def _catalog_for(search_path: tuple[Path, ...]) -> ProfileCatalog:
    hardware: dict[str, HardwareProfile] = {}
    models: dict[str, ModelProfile] = {}
    stacks: dict[str, StackProfile] = {}
    files: dict[str, str] = {}
    for directory in search_path:
        seen_here: dict[str, Path] = {}
        for path in _profile_files(directory):
            profile = _read_profile(path)
            key = f"{profile.profile}:{profile.name.lower()}"
            if key in seen_here:
                raise ConfigError(
                    f"{path}: {profile.profile} profile {profile.name!r} is also defined in "
                    f"{seen_here[key]}; rename one of them"
                )
            seen_here[key] = path
            if key in files:  # an earlier directory shadows this one
                continue
            files[key] = str(path)
            if isinstance(profile, HardwareProfile):
                hardware[profile.name.lower()] = profile
            elif isinstance(profile, StackProfile):
                stacks[profile.name.lower()] = profile
            else:
                models[profile.name.lower()] = profile
    return ProfileCatalog(hardware=hardware, models=models, stacks=stacks, files=files)


def load_catalog(search_path: Sequence[str | os.PathLike[str]] = ()) -> ProfileCatalog:
    """Load (once, then from cache) every profile on the search path.

    Nothing is read at import time; the first call reads and validates the files, later calls
    with the same path reuse the result (see `clear_profile_cache`).

    Args:
        search_path: extra directories, searched before ``$AGENTRT_PROFILE_PATH`` and the
            built-ins. Each may hold ``*.toml`` files directly or in ``hardware/`` and
            ``models/`` subdirectories.

    Returns:
        The catalog.

    Raises:
        ConfigError: a profile file is malformed; the message names the file and the field.
    """
    return _catalog_for(profile_search_path(search_path))


def load_hardware(
    name: str, *, search_path: Sequence[str | os.PathLike[str]] = ()
) -> HardwareProfile:
    """Look up a hardware profile by name or alias (``wse3``, ``h100``, ``h200``, ``b200``).

    Example:
        >>> load_hardware("h100_sxm").memory_gb
        80.0

    Args:
        name: the profile's name or one of its aliases, case-insensitive.
        search_path: extra directories to search first.

    Returns:
        The profile.

    Raises:
        UnknownNameError: no profile of that name; the message lists the known ones.
        ConfigError: a profile file on the path is malformed.
    """
    return load_catalog(search_path).get_hardware(name)


def load_model(name: str, *, search_path: Sequence[str | os.PathLike[str]] = ()) -> ModelProfile:
    """Look up a model profile by name or alias (``llama-3.1-70b``, ``gpt-oss-120b``, ...).

    Args:
        name: the profile's name or one of its aliases, case-insensitive.
        search_path: extra directories to search first.

    Returns:
        The profile.

    Raises:
        UnknownNameError: no profile of that name; the message lists the known ones.
        ConfigError: a profile file on the path is malformed.
    """
    return load_catalog(search_path).get_model(name)


def load_stack(
    name: str,
    *,
    hardware: HardwareProfile | None = None,
    search_path: Sequence[str | os.PathLike[str]] = (),
) -> StackProfile:
    """Look up a serving stack by name or alias (``cs-current``, ``cs-2024-08``, ``vllm``, ...).

    Args:
        name: the stack's name or one of its aliases, case-insensitive.
        hardware: check that the stack runs on this hardware.
        search_path: extra directories to search first.

    Returns:
        The stack.

    Raises:
        UnknownNameError: no stack of that name; the message lists those for ``hardware``.
        ConfigError: the stack runs on other hardware, or a profile file is malformed.
    """
    return load_catalog(search_path).get_stack(name, hardware)


def stack_names(search_path: Sequence[str | os.PathLike[str]] = ()) -> tuple[str, ...]:
    """Names of every serving stack on the search path, sorted.

    Args:
        search_path: extra directories to search first.

    Returns:
        The names (aliases not included).
    """
    return tuple(sorted(load_catalog(search_path).stacks))


def hardware_names(search_path: Sequence[str | os.PathLike[str]] = ()) -> tuple[str, ...]:
    """Names of every hardware profile on the search path, sorted.

    Args:
        search_path: extra directories to search first.

    Returns:
        The names (aliases not included).
    """
    return tuple(sorted(load_catalog(search_path).hardware))


def model_names(search_path: Sequence[str | os.PathLike[str]] = ()) -> tuple[str, ...]:
    """Names of every model profile on the search path, sorted.

    Args:
        search_path: extra directories to search first.

    Returns:
        The names (aliases not included).
    """
    return tuple(sorted(load_catalog(search_path).models))


def clear_profile_cache() -> None:
    """Forget loaded profiles, so edited or newly dropped files are read again."""
    _catalog_for.cache_clear()
