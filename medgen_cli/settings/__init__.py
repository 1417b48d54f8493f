"""One pydantic settings model per step, built from shared sections (see ``base`` for sources)."""

from .base import (
    SettingsError,
    load_settings,
    read_settings_file,
    settings_to_yaml,
    validate_settings,
)
from .common import AugmentSettings, DataSettings, RuntimeSettings, SplitSettings, StoreSettings
from .evaluate import EvaluateSettings, ExportSettings
from .preprocess import PreprocessSettings
from .prior import EncodeSettings, SampleSettings, TrainPriorSettings
from .train import TrainAESettings

STEP_SETTINGS = {
    "preprocess": PreprocessSettings,
    "train-ae": TrainAESettings,
    "encode-latents": EncodeSettings,
    "train-prior": TrainPriorSettings,
    "sample": SampleSettings,
    "evaluate": EvaluateSettings,
    "export": ExportSettings,
}

__all__ = [
    "AugmentSettings",
    "DataSettings",
    "EncodeSettings",
    "PreprocessSettings",
    "RuntimeSettings",
    "SampleSettings",
    "STEP_SETTINGS",
    "SettingsError",
    "SplitSettings",
    "StoreSettings",
    "TrainPriorSettings",
    "load_settings",
    "read_settings_file",
    "settings_to_yaml",
    "validate_settings",
]
