"""Hardware and model profiles: validated data, lazily loaded from sourced TOML files."""

from __future__ import annotations

import functools
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentrt.errors import ConfigError, UnknownNameError

__all__ = [
    "BUILTIN_PROFILE_DIR",
    "PROFILE_PATH_ENV",
    "Efficiency",
    "HardwareKind",
    "HardwareProfile",
    "ModelProfile",
    "Precision",
    "ProfileCatalog",
    "TokenPrice",
    "clear_profile_cache",
    "hardware_names",
    "load_catalog",
    "load_hardware",
    "load_model",
    "model_names",
    "profile_search_path",
]

#: Architecture families of the performance model (docs/performance-model.md): ``gpu`` and
#: ``hbm`` (TPU, Gaudi, Trainium, Maia) share the tensor/pipeline-parallel model; ``wafer`` and
#: ``lpu`` spread layers over SRAM (wafer cores, or many SRAM-only chips); ``rdu`` adds a DDR
#: tier behind HBM (SambaNova); ``fpga`` adds a deterministic per-layer pipeline latency.
HardwareKind = Literal["gpu", "hbm", "wafer", "lpu", "rdu", "fpga"]

#: Number formats the performance model knows; fp16 and int8/int4 map onto these (same bytes).
Precision = Literal["bf16", "fp8", "fp4"]

#: Environment variable holding extra profile directories, separated by ``os.pathsep``.
PROFILE_PATH_ENV = "AGENTRT_PROFILE_PATH"

#: Where the built-in profiles live (``hardware/*.toml`` and ``models/*.toml``).
BUILTIN_PROFILE_DIR = Path(__file__).resolve().parent

_Positive = Annotated[float, Field(gt=0)]
_Fraction = Annotated[float, Field(gt=0, le=1)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _missing_sources(owner: BaseModel, sources: Mapping[str, str], table: str = "sources") -> None:
    """Raise if a number given in the file has no entry in ``sources``."""
    missing = [
        name
        for name in sorted(owner.model_fields_set)
        if isinstance(getattr(owner, name), int | float)
        and not isinstance(getattr(owner, name), bool)
        and name not in sources
    ]
    if missing:
        raise ValueError(f"no entry in [{table}] for: {', '.join(missing)}")


class TokenPrice(_Frozen):
    """A published per-token price of one model on one substrate."""

    input_usd_per_mtok: float = Field(ge=0, description="USD per million prompt tokens.")
    output_usd_per_mtok: float = Field(ge=0, description="USD per million generated tokens.")
    source: str = Field(min_length=1, description="Where the price was published, and when.")


class Efficiency(_Frozen):
    """Fitted or assumed parameters of the performance model for one kind of hardware.

    Physics gives the floors (bytes over bandwidth, flops over peak); these parameters say how
    far above the floor real software runs. Each one names, in ``fitted_to``, the published
    points (rows of ``substrates/emulated/data/published_tuning.csv``) or measurements it came from.
    """

    memory_usable_fraction: _Fraction = Field(
        description="Share of each chip's memory that may hold weights and KV cache."
    )
    bandwidth_efficiency: _Fraction = Field(
        description="Achieved fraction of memory bandwidth while streaming weights and KV cache."
    )
    flop_efficiency: _Fraction = Field(
        description="Achieved fraction of peak matrix throughput (model FLOPs utilisation)."
    )
    iteration_overhead_s: float = Field(
        ge=0, description="Fixed cost of one forward pass: launches, scheduling, sampling."
    )
    request_overhead_s: float = Field(
        ge=0, description="Server-side cost of one request before its prefill: HTTP, tokenizer."
    )
    allreduce_latency_s: float = Field(
        default=0.0, ge=0, description="All-reduce latency floor between 2 chips (GPU only)."
    )
    allreduce_latency_per_doubling_s: float = Field(
        default=0.0,
        ge=0,
        description="Extra all-reduce latency each time the group doubles (GPU only).",
    )
    allreduce_bus_bandwidth_gb_per_s: float = Field(
        default=0.0, ge=0, description="All-reduce bus bandwidth, ring convention (GPU only)."
    )
    layer_latency_s: float = Field(
        default=0.0,
        ge=0,
        description="Fixed part of one layer's latency: wafer and LPU layer pipelines; a fused "
        "layer kernel (RDU) or a compiled layer pipeline's fill (FPGA).",
    )
    mesh_hop_s: float = Field(
        default=0.0,
        ge=0,
        description="Layer latency per core (wafer) or chip (LPU) of mesh distance across the "
        "layer's region.",
    )
    expert_latency_s: float = Field(
        default=0.0,
        ge=0,
        description="Fixed latency per routed expert a pass touches, per MoE layer (RDU: each "
        "expert is a separate weight stream from HBM).",
    )
    fitted_to: dict[str, str] = Field(
        description="For each parameter: the CSV rows or measurements it was fitted to."
    )

    @model_validator(mode="after")
    def _every_parameter_is_justified(self) -> Efficiency:
        _missing_sources(self, self.fitted_to, table="efficiency.fitted_to")
        return self


class HardwareProfile(_Frozen):
    """One accelerator: a GPU or HBM chip, a wafer, an SRAM-only LPU, a three-tier RDU, an FPGA.

    A wafer-scale engine is one chip per CS-3 system. For a wafer, "memory" is the on-wafer
    SRAM that holds weights and KV cache, and the scale-up link is the system I/O between
    wafers; for an LPU it is the chip's SRAM; for an RDU, HBM (DDR is ``offchip_memory_gb``).
    """

    profile: Literal["hardware"] = Field(description="Marks the file as a hardware profile.")
    name: str = Field(min_length=1, description="Lookup name, e.g. 'h100'.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names accepted by lookups.")
    display_name: str = Field(description="Human-readable name.")
    kind: HardwareKind = Field(
        description="Family: gpu/hbm (TP/PP), wafer/lpu (SRAM, layers), rdu (three-tier), fpga."
    )
    chips_per_node: int = Field(ge=1, description="Chips sharing the fast scale-up domain.")
    cores: int | None = Field(
        default=None, ge=1, description="Compute cores per chip (wafer mesh)."
    )
    memory_gb: _Positive = Field(description="Memory per chip for weights and KV cache (GB).")
    memory_bandwidth_tb_per_s: _Positive = Field(description="Bandwidth of that memory (TB/s).")
    sram_mb: float | None = Field(
        default=None, gt=0, description="On-chip SRAM or L2 cache per chip (MB)."
    )
    offchip_memory_gb: float | None = Field(
        default=None, gt=0, description="Third memory tier behind HBM per chip, e.g. DDR (GB)."
    )
    offchip_bandwidth_tb_per_s: float | None = Field(
        default=None, gt=0, description="Bandwidth of that tier (TB/s)."
    )
    peak_bf16_tflops: _Positive = Field(description="Dense BF16 matrix peak per chip (TFLOP/s).")
    peak_fp8_tflops: float | None = Field(
        default=None, gt=0, description="Dense FP8 peak (TFLOP/s)."
    )
    peak_fp4_tflops: float | None = Field(
        default=None, gt=0, description="Dense FP4 peak (TFLOP/s)."
    )
    scale_up_bandwidth_gb_per_s: _Positive = Field(
        description="Per-chip, per-direction point-to-point bandwidth inside a node, as "
        "achieved (NVLink through NCCL; a wafer's system I/O)."
    )
    scale_up_latency_s: float = Field(ge=0, description="Latency of one hop inside a node.")
    scale_out_bandwidth_gb_per_s: _Positive = Field(
        description="Per-chip, per-direction point-to-point bandwidth between nodes, as achieved "
        "(InfiniBand, Ethernet)."
    )
    scale_out_latency_s: float = Field(ge=0, description="Latency of one hop between nodes.")
    power_w: _Positive = Field(description="Power drawn per chip while busy (W).")
    node_power_w: float | None = Field(default=None, gt=0, description="Power of a whole node (W).")
    price_usd_per_chip_hour: float | None = Field(
        default=None, gt=0, description="Rental price per chip-hour, where one is published."
    )
    prices: dict[str, TokenPrice] = Field(
        default_factory=dict, description="Published per-token prices by model name."
    )
    efficiency: Efficiency = Field(description="Fitted and assumed model parameters.")
    sources: dict[str, str] = Field(description="Where each number comes from, by field name.")

    @model_validator(mode="after")
    def _check(self) -> HardwareProfile:
        _missing_sources(self, self.sources)
        if self.kind == "wafer":
            if self.cores is None:
                raise ValueError("a wafer profile needs 'cores' (the mesh size)")
            if self.efficiency.mesh_hop_s <= 0:
                raise ValueError("a wafer profile needs efficiency.mesh_hop_s > 0")
        elif self.kind == "lpu":
            if self.efficiency.mesh_hop_s <= 0 or self.efficiency.layer_latency_s <= 0:
                raise ValueError(
                    "an lpu profile needs efficiency.layer_latency_s and mesh_hop_s > 0"
                )
        elif self.kind == "rdu" and (
            self.offchip_memory_gb is None or self.offchip_bandwidth_tb_per_s is None
        ):
            raise ValueError(
                "an rdu profile needs offchip_memory_gb and offchip_bandwidth_tb_per_s"
            )
        if not self.spreads_layers and self.efficiency.allreduce_bus_bandwidth_gb_per_s <= 0:
            raise ValueError(
                f"a {self.kind} profile needs efficiency.allreduce_bus_bandwidth_gb_per_s > 0"
            )
        return self

    @property
    def spreads_layers(self) -> bool:
        """Whether whole layers are spread over SRAM (wafer, LPU) rather than split by TP/PP."""
        return self.kind in ("wafer", "lpu")

    def peak_tflops(self, precision: Precision) -> float:
        """Dense peak for matrix math in ``precision``.

        A precision the chip has no tensor-core path for (fp4 on Hopper) is computed at the
        next wider precision it does have: the weights are smaller, the math is not faster.

        Args:
            precision: the number format of the weights.

        Returns:
            Peak TFLOP/s per chip.
        """
        order: tuple[tuple[Precision, float | None], ...] = (
            ("fp4", self.peak_fp4_tflops),
            ("fp8", self.peak_fp8_tflops),
            ("bf16", self.peak_bf16_tflops),
        )
        start = [p for p, _ in order].index(precision)
        for _, rate in order[start:]:
            if rate is not None:
                return rate
        return self.peak_bf16_tflops  # pragma: no cover - bf16 is required


class ModelProfile(_Frozen):
    """One transformer model's shape, as published in its ``config.json`` and model card."""

    profile: Literal["model"] = Field(description="Marks the file as a model profile.")
    name: str = Field(min_length=1, description="Lookup name, e.g. 'llama-3.1-70b'.")
    aliases: tuple[str, ...] = Field(default=(), description="Other names accepted by lookups.")
    display_name: str = Field(description="Human-readable name.")
    total_params_b: _Positive = Field(description="All parameters (billions): sets capacity.")
    active_params_b: _Positive = Field(
        description="Parameters used per token (billions): sets flops and, for MoE, bytes."
    )
    layers: int = Field(ge=1, description="Transformer layers.")
    hidden_size: int = Field(ge=1, description="Model width d_model.")
    intermediate_size: int = Field(ge=1, description="FFN width (per expert for MoE).")
    attention_heads: int = Field(ge=1, description="Query heads.")
    kv_heads: int = Field(ge=1, description="Key/value heads (grouped-query attention).")
    head_dim: int = Field(ge=1, description="Width of one attention head.")
    vocab_size: int = Field(ge=1, description="Tokenizer vocabulary.")
    experts: int | None = Field(default=None, ge=2, description="Routed experts per MoE layer.")
    experts_active: int | None = Field(default=None, ge=1, description="Routed experts per token.")
    mla_kv_dim: int | None = Field(
        default=None,
        ge=1,
        description="Values cached per token per layer with latent attention (MLA).",
    )
    sliding_window_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Window of the layers with local (sliding or chunked) attention.",
    )
    sliding_window_layers: int = Field(
        default=0, ge=0, description="How many layers use that window."
    )
    native_precision: Precision = Field(description="Precision the weights were released in.")
    context_length_tokens: int = Field(ge=1, description="Longest supported context.")
    sources: dict[str, str] = Field(description="Where each number comes from, by field name.")

    @model_validator(mode="after")
    def _check(self) -> ModelProfile:
        _missing_sources(self, self.sources)
        if self.active_params_b > self.total_params_b:
            raise ValueError("active_params_b cannot exceed total_params_b")
        if (self.experts is None) != (self.experts_active is None):
            raise ValueError("set both 'experts' and 'experts_active', or neither")
        if self.experts is not None and self.experts_active is not None:
            if self.experts_active >= self.experts:
                raise ValueError("experts_active must be fewer than experts")
        elif not math.isclose(self.active_params_b, self.total_params_b):
            raise ValueError("a dense model (no 'experts') has active_params_b == total_params_b")
        if self.sliding_window_layers > self.layers:
            raise ValueError("sliding_window_layers cannot exceed layers")
        if self.sliding_window_layers and self.sliding_window_tokens is None:
            raise ValueError("sliding_window_layers needs sliding_window_tokens")
        if self.attention_heads % self.kv_heads:
            raise ValueError("attention_heads must be a multiple of kv_heads")
        return self

    @property
    def is_moe(self) -> bool:
        """Whether the model is a mixture of experts."""
        return self.experts is not None

    @property
    def kv_values_per_token_per_layer(self) -> int:
        """Numbers cached per token per layer: keys and values, or the MLA latent."""
        if self.mla_kv_dim is not None:
            return self.mla_kv_dim
        return 2 * self.kv_heads * self.head_dim

    @property
    def expert_params_b(self) -> float:
        """Parameters in routed experts (billions); zero for a dense model.

        Derived from total and active counts: ``active = shared + expert · k / E``.
        """
        if self.experts is None or self.experts_active is None:
            return 0.0
        share = self.experts_active / self.experts
        return (self.total_params_b - self.active_params_b) / (1.0 - share)

    @property
    def shared_params_b(self) -> float:
        """Parameters every token uses (billions): attention, embeddings, dense and shared FFNs."""
        return self.total_params_b - self.expert_params_b


_P = TypeVar("_P", HardwareProfile, ModelProfile)


class ProfileCatalog(_Frozen):
    """Every profile found on a search path, by name and alias."""

    hardware: dict[str, HardwareProfile] = Field(description="Hardware profiles by name.")
    models: dict[str, ModelProfile] = Field(description="Model profiles by name.")
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
    for sub in ("hardware", "models"):
        files.extend((directory / sub).glob("*.toml"))
    return sorted(files)


def _read_profile(path: Path) -> HardwareProfile | ModelProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read profile: {exc}") from exc
    kind = data.get("profile")
    cls: type[HardwareProfile | ModelProfile]
    if kind == "hardware":
        cls = HardwareProfile
    elif kind == "model":
        cls = ModelProfile
    else:
        raise ConfigError(
            f'{path}: field \'profile\' must be "hardware" or "model", got {kind!r}; '
            'every profile file starts with profile = "hardware" or profile = "model"'
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
            else:
                models[profile.name.lower()] = profile
    return ProfileCatalog(hardware=hardware, models=models, files=files)


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
