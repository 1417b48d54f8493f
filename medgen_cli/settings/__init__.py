"""One pydantic settings model per step, built from shared sections (see ``base`` for sources)."""

from .base import (
    SettingsError,
    load_settings,
    read_settings_file,
    settings_to_yaml,
    validate_settings,
)
from .common import AugmentSettings, DataSettings, RuntimeSettings, SplitSettings, StoreSettings
from .preprocess import PreprocessSettings
from .train import TrainAESettings

STEP_SETTINGS = {
    "preprocess": PreprocessSettings,
    "train-ae": TrainAESettings,
}

__all__ = [
    "AugmentSettings",
    "DataSettings",
    "PreprocessSettings",
    "RuntimeSettings",
    "STEP_SETTINGS",
    "SettingsError",
    "SplitSettings",
    "StoreSettings",
    "load_settings",
    "read_settings_file",
    "settings_to_yaml",
    "validate_settings",
]
