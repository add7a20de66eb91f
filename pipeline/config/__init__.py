"""Run configuration: frozen dataclasses, YAML presets and `--set key=value` overrides.

A `Config` is built once per command from defaults, then a YAML preset, then overrides, and is
never mutated afterwards. Every key is checked: an unknown key or a value of the wrong type is a
`ConfigError` that names the key and, for a typo, the nearest valid key.
"""

from pipeline.config.loading import (
    check_key,
    dump_yaml,
    flatten,
    load_config,
    parse_override,
    read_yaml,
    to_dict,
    with_values,
)
from pipeline.config.naming import fingerprint, run_name
from pipeline.config.rules import SEVERAL_WORKERS, monitor_mode, subword_sampling
from pipeline.config.schema import Config, DataConfig, ExportConfig, ModelConfig, TokenizerConfig, TrainConfig

__all__ = [
    "Config", "DataConfig", "ExportConfig", "ModelConfig", "SEVERAL_WORKERS", "TokenizerConfig", "TrainConfig",
    "check_key", "dump_yaml", "fingerprint", "flatten", "load_config", "monitor_mode", "parse_override",
    "read_yaml", "run_name", "subword_sampling", "to_dict", "with_values",
]
