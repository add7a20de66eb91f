import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import Config, flatten, load_config, reference
from pipeline.errors import ConfigError
from tests.conftest import ROOT


def test_the_docs_page_of_config_keys_is_what_the_schema_says():
    page = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    assert page == reference.markdown(), "docs/config.md is stale: run `pipeline config --markdown > docs/config.md`"


def test_pipeline_config_lists_every_key_with_its_type_default_and_help():
    out = CliRunner().invoke(main, ["config"]).output
    docs = {doc.name: doc for doc in reference.key_docs()}
    assert list(docs) == list(flatten(Config()))
    for name, doc in docs.items():
        assert doc.help.strip() and f"\n    {doc.help}" in out, name
        assert f"{name}  ({doc.type}; default " in out, name
    assert docs["train.devices"].type == "list of str" and docs["model.cell"].type == "one of lstm, gru, simple_rnn"


@pytest.mark.parametrize("value", ['["CPU:0","CPU:1"]', "[CPU:0, CPU:1]", "CPU:0,CPU:1"])
def test_a_key_that_holds_a_list_takes_a_list(value):
    config = load_config(None, ["train.distribute=mirrored", f"train.devices={value}"])
    assert config.train.devices == ("CPU:0", "CPU:1")


def test_a_list_key_in_a_preset_is_a_list_and_a_list_elsewhere_stays_text(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  distribute: mirrored\n  devices: [GPU:0, GPU:1]\n", encoding="utf-8")
    assert load_config(preset).train.devices == ("GPU:0", "GPU:1")
    assert load_config(None, ["train.sample_prompt=[x, y]"]).train.sample_prompt == "[x, y]"
    with pytest.raises(ConfigError, match=r"config key train.devices must be a list of strings; got \[1, 2\]"):
        load_config(None, ["train.distribute=mirrored", "train.devices=[1, 2]"])
