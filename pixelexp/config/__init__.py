"""A run's settings (`settings`: the dataclasses, their checks, dotted overrides) and the
files they come from (`files`: experiment and config YAML)."""

from pixelexp.config.files import (
    EXPERIMENT_KEYS,
    PUBLISHED_METRICS,
    Experiment,
    Variant,
    config_from_dict,
    load_config,
    load_experiment,
    read_yaml,
    yaml_path,
)
from pixelexp.config.settings import (
    Config,
    DataConfig,
    ModelConfig,
    TrackConfig,
    TrainConfig,
    check_key,
    check_name,
    did_you_mean,
    flatten,
    known_keys,
    parse_overrides,
    resolve,
    shown,
    shown_path,
)

__all__ = [
    "EXPERIMENT_KEYS", "PUBLISHED_METRICS", "Config", "DataConfig", "Experiment", "ModelConfig", "TrackConfig",
    "TrainConfig", "Variant", "check_key", "check_name", "config_from_dict", "did_you_mean", "flatten", "known_keys",
    "load_config", "load_experiment", "parse_overrides", "read_yaml", "resolve", "shown", "shown_path", "yaml_path",
]
