import pytest

from pipeline.config import Config, dump_yaml, fingerprint, flatten, load_config, parse_override, run_name
from pipeline.errors import ConfigError
from tests.conftest import PRESETS_DIR

PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))


def test_defaults_are_a_real_run():
    config = load_config()
    assert config.task == "sentiment" and config.data.tfds == "imdb_reviews"
    assert config.train.epochs > 0 and config.model.layers >= 1


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads(preset):
    config = load_config(preset)
    assert config.name


def test_overrides_parse_yaml_scalars_and_coerce_int_to_float():
    config = load_config(None, ["train.epochs=3", "train.learning_rate=1", "model.bidirectional=false",
                                "data.validation=null"])
    assert config.train.epochs == 3
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.model.bidirectional is False and config.data.validation is None


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match=r"unknown config key train\.epoch; did you mean train\.epochs\?"):
        load_config(None, ["train.epoch=3"])


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  unit: 12\n")
    with pytest.raises(ConfigError, match=r"model\.unit; did you mean model\.units"):
        load_config(path)


@pytest.mark.parametrize("item, pattern", [
    ("train.epochs=three", r"train\.epochs must be int; got 'three'"),
    ("train.epochs=true", r"train\.epochs must be int"),
    ("tokenizer.model_type=wordpiece", r"tokenizer\.model_type must be one of unigram, bpe, char, word"),
    ("model.pooling=max", r"model\.pooling must be one of final, mean, mean_max; got 'max'"),
    ("model.dropout=1.5", r"model\.dropout must be in \[0, 1\)"),
    ("model.ensemble=0", r"model\.ensemble must be at least 1; got 0"),
    ("train.weight_decay=-0.1", r"train\.weight_decay must be 0 or more; got -0.1"),
    ("train.warmup_steps=-1", r"train\.warmup_steps must be 0 or more; got -1"),
    ("train.label_smoothing=1", r"train\.label_smoothing must be in \[0, 1\); got 1"),
    ("train=3", r"train is a section"),
])
def test_wrong_values_name_the_key(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [item])


def test_on_and_off_are_strings_as_in_yaml_1_2(tmp_path):
    assert load_config(None, ["train.mixed_precision=on"]).train.mixed_precision == "on"
    path = tmp_path / "preset.yaml"
    path.write_text("train:\n  mixed_precision: off\n  deterministic: true\n")
    config = load_config(path)
    assert config.train.mixed_precision == "off" and config.train.deterministic is True


def test_override_values_that_are_not_scalars_stay_strings():
    assert parse_override("train.sample_prompt=ROMEO:") == ("train.sample_prompt", "ROMEO:")
    assert parse_override("name=[x") == ("name", "[x")


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_override("train.epochs")


def test_language_model_cannot_be_bidirectional():
    with pytest.raises(ConfigError, match="model.bidirectional must be false for task lm"):
        load_config(None, ["task=lm", "model.bidirectional=true"])


def test_ensemble_is_for_sentiment_only():
    with pytest.raises(ConfigError, match="model.ensemble applies to task sentiment only; got 2 for task lm"):
        load_config(None, ["task=lm", "model.bidirectional=false", "model.ensemble=2"])


def test_label_smoothing_is_for_sentiment_only():
    with pytest.raises(ConfigError, match="train.label_smoothing applies to task sentiment only"):
        load_config(None, ["task=lm", "model.bidirectional=false", "train.label_smoothing=0.1"])


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_fingerprint_follows_values_not_spelling(tmp_path):
    same = fingerprint(load_config(None, ["train.epochs=3", "train.learning_rate=1"]))
    assert same == fingerprint(load_config(None, ["train.epochs=3", "train.learning_rate=1.0"]))
    preset = tmp_path / "imdb.yaml"
    preset.write_text("train:\n  epochs: 3\n  learning_rate: 1.0\n")
    assert same == fingerprint(load_config(preset))
    assert same != fingerprint(load_config(None, ["train.epochs=4", "train.learning_rate=1"]))


def test_flatten_and_run_name():
    config = Config()
    flat = flatten(config)
    assert flat["model.units"] == 128 and flat["data.tfds"] == "imdb_reviews"
    assert run_name(config) == "imdb-bilstm-2x128"


def test_exponent_floats_parse_as_numbers():
    config = load_config(None, ["train.learning_rate=1e-3", "model.dropout=2.5E-1"])
    assert config.train.learning_rate == 0.001 and config.model.dropout == 0.25


def test_a_fraction_the_preset_split_file_overrides_is_an_error_naming_both(tmp_path):
    preset = tmp_path / "local.yaml"
    preset.write_text("data:\n  tfds: null\n  train: train.txt\n  validation: dev.txt\n")
    with pytest.raises(ConfigError, match=r"^config key data\.validation_fraction has no effect because "
                                          r"data\.validation is dev\.txt: .*set data\.validation=null"):
        load_config(preset, ["data.validation_fraction=0.1"])
    # Carving instead, or replacing the preset's fraction with a file, is what the user means.
    assert load_config(preset, ["data.validation=null", "data.validation_fraction=0.1"]).data.validation is None
    assert load_config(preset, ["data.validation_fraction=0.1", "data.validation=null"]).data.validation is None


def test_a_split_file_given_after_a_preset_fraction_replaces_it(tmp_path):
    preset = tmp_path / "carve.yaml"
    preset.write_text("data:\n  tfds: null\n  train: train.txt\n  validation: null\n  validation_fraction: 0.2\n")
    assert load_config(preset, ["data.validation=dev.txt"]).data.validation == "dev.txt"


@pytest.mark.parametrize(("overrides", "ignored", "by"), [
    (["data.test_fraction=0.2"], "data.test_fraction", "data.test is test"),
    (["data.format=csv"], "data.format", "data.tfds is imdb_reviews"),
    (["data.encoding=latin-1"], "data.encoding", "data.tfds is imdb_reviews"),
    (["data.tfds=null", "data.manual_dir=downloads"], "data.manual_dir", "data.tfds is null"),
])
def test_other_keys_that_another_key_makes_meaningless(overrides, ignored, by):
    with pytest.raises(ConfigError, match=f"^config key {ignored} has no effect because {by}: "):
        load_config(None, overrides)


def test_a_resolved_config_loads_as_it_was_logged(tmp_path):
    config = load_config(None, ["data.tfds=null", "data.train=train.txt", "data.validation=dev.txt",
                                "data.test=test.txt"])
    dump_yaml(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
