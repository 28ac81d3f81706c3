"""Hardware and model profiles: validated data, lazily loaded from sourced TOML files.

The schema (pydantic models) is in `substrates.emulated.profiles.schema`; finding, reading and
caching the files in `substrates.emulated.profiles.catalog`. The data: ``hardware/*.toml`` and
``models/*.toml`` beside this file.
"""

from substrates.emulated.profiles.catalog import (
    BUILTIN_PROFILE_DIR,
    PROFILE_PATH_ENV,
    ProfileCatalog,
    clear_profile_cache,
    hardware_names,
    load_catalog,
    load_hardware,
    load_model,
    model_names,
    profile_search_path,
)
from substrates.emulated.profiles.schema import (
    Efficiency,
    HardwareKind,
    HardwareProfile,
    ModelProfile,
    Precision,
    TokenPrice,
)

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
