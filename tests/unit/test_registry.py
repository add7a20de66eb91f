import dataclasses

from pipeline import registry
from pipeline.cli import main
from pipeline.config import load_config


def test_every_stage_reads_only_stages_before_it_and_has_run_load_and_a_logged_result():
    seen = set()
    for stage in registry.STAGES:
        assert set(stage.reads) <= seen, f"{stage.name} reads a stage that runs after it"
        seen.add(stage.name)
        module = stage.load_module()
        assert callable(module.run) and callable(module.load), stage.name
        result = module.run.__annotations__["return"]
        result_type = getattr(module, result) if isinstance(result, str) else result
        assert dataclasses.is_dataclass(result_type) and callable(result_type.logged), stage.name


def test_the_cli_has_a_command_per_stage_in_registry_order():
    assert [name for name in main.commands if name in registry.NAMES] == list(registry.NAMES)
    force = next(p for p in main.commands["run"].params if p.name == "force")
    assert list(force.type.choices) == list(registry.NAMES)
    for stage in registry.STAGES:
        assert main.commands[stage.name].help == stage.help


def test_a_stage_key_reads_only_the_config_keys_it_declares():
    config = load_config(None, ["data.tfds=null", "data.train=x.txt", "data.test=y.txt"])
    for stage in registry.STAGES:
        keys = stage.config_keys(config)
        assert keys[0] == "task" and len(keys) == len(set(keys)), stage.name
    assert "train.epochs" in registry.get("train").config_keys(config)
    assert "train.epochs" not in registry.get("tokenize").config_keys(config)
    assert not any(k.startswith("model.") for k in registry.get("prepare").config_keys(config))
