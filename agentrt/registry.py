"""Name -> substrate / tool factory, found through entry points, for the CLI and plan files.

Code passes instances (``Agent(substrate=...)``); names are for the edges. A package adds a
substrate or a tool exactly like the built-ins do, with an entry point in its ``pyproject.toml``::

    [project.entry-points."agentrt.substrates"]
    my-engine = "my_package.engine:make_engine"     # make_engine(**options) -> Substrate

Factories are called with keyword options (strings from the command line are converted to the
annotated parameter types) and must accept ``seed: int | None``.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
import typing
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Literal, final

from pydantic import BaseModel, TypeAdapter, ValidationError

from agentrt.errors import ConfigError, UnknownNameError
from agentrt.substrate import Substrate
from agentrt.tool import Tool

__all__ = ["Registry", "default_registry", "resolve_substrate", "resolve_tool"]

Group = Literal["agentrt.substrates", "agentrt.tools", "agentrt.wrappers"]
_KIND: dict[Group, str] = {
    "agentrt.substrates": "substrate",
    "agentrt.tools": "tool",
    "agentrt.wrappers": "wrapper",
}


@final
class Registry:
    """Lazily loaded, cached name -> factory tables for substrates and tools.

    Entry points are read on the first lookup, not at import. Two distributions registering the
    same name is an error that names both.

    Example:
        >>> reg = Registry()
        >>> "fixed" in reg.names("agentrt.substrates")
        True
        >>> sub = reg.substrate("fixed", latency_ms=5)
    """

    def __init__(self) -> None:
        self._tables: dict[Group, dict[str, EntryPoint]] = {}
        self._loaded: dict[tuple[Group, str], Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def _table(self, group: Group) -> dict[str, EntryPoint]:
        with self._lock:
            table = self._tables.get(group)
            if table is None:
                table = {}
                for ep in entry_points(group=group):
                    other = table.get(ep.name)
                    if other is not None and other.value != ep.value:
                        raise ConfigError(
                            f"two packages register the {_KIND[group]} {ep.name!r}: "
                            f"{_dist_name(other)} ({other.value}) and {_dist_name(ep)} "
                            f"({ep.value}); uninstall one of them"
                        )
                    table[ep.name] = ep
                self._tables[group] = table
            return table

    def names(self, group: Group) -> list[str]:
        """The registered names in ``group``, sorted."""
        return sorted(self._table(group))

    def factory(self, group: Group, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``, imported on first use.

        Raises:
            UnknownNameError: no such name; the message lists the known ones.
            ConfigError: the entry point cannot be imported.
        """
        key = (group, name)
        if key in self._loaded:
            return self._loaded[key]
        table = self._table(group)
        ep = table.get(name)
        if ep is None:
            raise UnknownNameError(_KIND[group], name, list(table))
        try:
            factory: Callable[..., Any] = ep.load()
        except (ImportError, AttributeError) as exc:
            raise ConfigError(_load_failure(group, ep, exc)) from exc
        if not callable(factory):
            raise ConfigError(f"entry point {ep.value!r} for {name!r} is not callable")
        self._loaded[key] = factory
        return factory

    def substrate(self, name: str, **options: Any) -> Substrate:
        """Build the substrate registered as ``name`` with keyword ``options``.

        String option values (from a command line) are converted to the factory's annotated
        parameter types; unknown options are an error listing the accepted ones. ``NAME:ARG``
        (e.g. ``route:fleet.yaml``) names the substrate ``NAME`` with the option ``spec=ARG``.
        """
        base, colon, arg = name.partition(":")
        if colon and name not in self._table("agentrt.substrates"):
            name, options = base, {**options, "spec": arg}
        made = _call(self.factory("agentrt.substrates", name), "substrate", name, options)
        if not isinstance(made, Substrate):
            raise ConfigError(
                f"the factory for substrate {name!r} returned {made!r}, not a Substrate"
            )
        return made

    def wrap(
        self, name: str, substrate: Substrate, spec: str, *, seed: int | None = None
    ) -> Substrate:
        """Wrap ``substrate`` with the wrapper registered as ``name`` (group ``agentrt.wrappers``).

        A wrapper factory is called as ``factory(substrate, spec, seed=seed)``, e.g.
        ``faults = "substrates.fleet.faults:wrap"`` for ``--faults SPEC``.
        """
        made = self.factory("agentrt.wrappers", name)(substrate, spec, seed=seed)
        if not isinstance(made, Substrate):
            raise ConfigError(f"the wrapper {name!r} returned {made!r}, not a Substrate")
        return made

    def tool_args_model(self, name: str) -> type[BaseModel] | None:
        """The argument model of the tool registered as ``name``, without building the tool.

        Read from the factory's ``args_model`` attribute, else from the ``args_model`` of the
        class its return annotation names (``def make_debug(...) -> DebugTool``). None when the
        factory declares neither: the plan's arguments are then checked only when a step runs.

        Example:
            >>> default_registry().tool_args_model("search").model_fields["query"].annotation
            <class 'str'>

        Raises:
            UnknownNameError: no such tool; the message lists the known ones.
            ConfigError: the entry point cannot be imported.
        """
        factory = self.factory("agentrt.tools", name)
        model = getattr(factory, "args_model", None)
        if model is None:
            try:
                returned = typing.get_type_hints(factory).get("return")
            except Exception:  # unresolvable annotations: no model known
                returned = None
            model = getattr(returned, "args_model", None)
        return model if isinstance(model, type) and issubclass(model, BaseModel) else None

    def tool(self, name: str, **options: Any) -> Tool:
        """Build the tool registered as ``name`` with keyword ``options``."""
        made = _call(self.factory("agentrt.tools", name), "tool", name, options)
        if not isinstance(made, Tool):
            raise ConfigError(f"the factory for tool {name!r} returned {made!r}, not a Tool")
        return made


def _dist_name(ep: EntryPoint) -> str:
    dist = ep.dist
    return dist.name if dist is not None else "an unknown distribution"


def _load_failure(group: Group, ep: EntryPoint, exc: BaseException) -> str:
    message = f"cannot load the {_KIND[group]} {ep.name!r} from {ep.value!r}: {exc}"
    top = ep.module.split(".")[0]
    module = sys.modules.get(top)
    origin = getattr(module, "__file__", None)
    if origin is not None and ep.dist is not None and ep.dist.name == "agentrt":
        ours = Path(__file__).resolve().parent.parent / top
        if Path(origin).resolve().parent != ours:
            message += (
                f"; the package {top!r} was imported from {origin}, which is not agentrt's own "
                f"{top!r} package ({ours}): another package of that name comes first on "
                "sys.path; rename or remove it"
            )
    return message


def _call(factory: Callable[..., Any], kind: str, name: str, options: Mapping[str, Any]) -> Any:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return factory(**options)
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: pass values through unconverted
        hints = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    converted: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params and not takes_any:
            accepted = [p for p in params if p != "seed"]
            raise ConfigError(
                f"{kind} {name!r} has no option {key!r}; its options: "
                f"{', '.join(accepted) or 'none'}"
            )
        hint = hints.get(key)
        if isinstance(value, str) and hint is not None:
            try:
                value = TypeAdapter(hint).validate_strings(value)
            except ValidationError as exc:
                raise ConfigError(
                    f"option {key}={value!r} of {kind} {name!r} is not a valid "
                    f"{getattr(hint, '__name__', hint)}: {exc.errors()[0]['msg']}"
                ) from exc
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(
                f"option {key}={value} of {kind} {name!r} must be a finite number (not inf or nan)"
            )
        converted[key] = value
    try:
        return factory(**converted)
    except ValidationError as exc:  # a pydantic config model refused a value
        # Values are not echoed: an option may be an API key.
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "its options"
        raise ConfigError(
            f"{kind} {name!r}: option {field}: {error['msg'].removeprefix('Value error, ')}"
        ) from exc
    except (TypeError, ValueError) as exc:
        given = ", ".join(k for k in options if k != "seed") or "no options"
        raise ConfigError(f"cannot build {kind} {name!r} (options: {given}): {exc}") from exc


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry used by the CLI (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def resolve_substrate(name: str, **options: Any) -> Substrate:
    """Build a registered substrate by name.

    Example:
        >>> resolve_substrate("fixed", latency_ms=200).name
        'fixed'

    Raises:
        UnknownNameError: the name is not registered; the message lists the known names.
    """
    return default_registry().substrate(name, **options)


def resolve_tool(name: str, **options: Any) -> Tool:
    """Build a registered tool by name.

    Raises:
        UnknownNameError: the name is not registered; the message lists the known names.
    """
    return default_registry().tool(name, **options)
