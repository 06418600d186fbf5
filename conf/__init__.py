"""Configuration: YAML files in this folder, loaded once into typed frozen objects."""

from conf.loader import config_from_dict, flatten, load_config, to_dict
from conf.schema import (
    BacktestConfig,
    CcxtConfig,
    CheckpointConfig,
    Config,
    DataConfig,
    FeatureConfig,
    LabelConfig,
    LiveConfig,
    ModelConfig,
    RayConfig,
    RunConfig,
    ServeConfig,
    SyntheticConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "BacktestConfig",
    "CcxtConfig",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "FeatureConfig",
    "LabelConfig",
    "LiveConfig",
    "ModelConfig",
    "RayConfig",
    "RunConfig",
    "ServeConfig",
    "SyntheticConfig",
    "TrackingConfig",
    "TrainConfig",
    "config_from_dict",
    "flatten",
    "load_config",
    "to_dict",
]
