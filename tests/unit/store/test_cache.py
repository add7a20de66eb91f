"""Content-addressed stage outputs: what changes a stage's key, and how `pipeline run` reuses them."""

from __future__ import annotations

import re
import shutil

import pytest

from pipeline.config import load_config
from pipeline.data import subwords
from pipeline.registry import NAMES
from pipeline.stages import tokenization
from pipeline.store import cache
from pipeline.store.workdir import atomic_output, stage_dir
from tests.conftest import tiny_overrides


def _keys(files, tmp_path, *extra):
    return cache.stage_keys(load_config(None, [*tiny_overrides(files, tmp_path), *extra]))


def test_same_config_same_keys_and_normalised_values(sentiment_files, tmp_path):
    base = _keys(sentiment_files, tmp_path)
    assert base == _keys(sentiment_files, tmp_path)
    assert base == _keys(sentiment_files, tmp_path, 'train.epochs="2"', "train.learning_rate=1e-3")
    assert len(set(base.values())) == len(base), "every stage has its own key"


@pytest.mark.parametrize("change, first_changed", [
    ("train.epochs=3", "train"),
    ("model.units=16", "train"),
    ("data.split_seed=7", "prepare"),  # the test split is carved with it
    ("train.seed=7", "train"),  # the initialisation only: the carved splits stay
    ("tokenizer.vocab_size=50", "tokenize"),
    ("train.max_length=8", "tokenize"),  # a classifier's sequences are cut when encoded
    ("data.test_fraction=0.3", "prepare"),
])
def test_a_change_reruns_its_stage_and_everything_after(sentiment_files, tmp_path, change, first_changed):
    before, after = _keys(sentiment_files, tmp_path), _keys(sentiment_files, tmp_path, change)
    first = NAMES.index(first_changed)
    for index, stage in enumerate(NAMES):
        assert (before[stage] != after[stage]) == (index >= first), stage


@pytest.mark.parametrize("change", ["name=other", "export.dir=elsewhere", "export.register_as=tiny"])
def test_options_that_do_not_change_outputs_keep_every_key(sentiment_files, tmp_path, change):
    assert _keys(sentiment_files, tmp_path) == _keys(sentiment_files, tmp_path, change)


@pytest.mark.parametrize("key", ["data.tfds_data_dir", "data.manual_dir"])
def test_where_tfds_keeps_its_files_keeps_every_key(tmp_path, key):
    shakespeare = ["task=lm", "data.tfds=tiny_shakespeare", "data.validation=validation", "model.bidirectional=false"]
    before = cache.stage_keys(load_config(None, shakespeare))
    assert cache.stage_keys(load_config(None, [*shakespeare, f"{key}={tmp_path}"])) == before


def test_input_files_count_by_content_not_path(sentiment_files, tmp_path):
    before = _keys(sentiment_files, tmp_path)
    moved = {name: shutil.copy(path, tmp_path / f"copy-{path.name}") for name, path in sentiment_files.items()}
    assert _keys(moved, tmp_path) == before
    with sentiment_files["train"].open("a") as f:
        f.write("1 one more line\n")
    assert _keys(sentiment_files, tmp_path)["prepare"] != before["prepare"]


def test_a_new_installed_version_changes_every_key(sentiment_files, tmp_path, monkeypatch):
    before = _keys(sentiment_files, tmp_path)
    monkeypatch.setattr(cache, "installed_version", lambda: "0.0.0")
    after = _keys(sentiment_files, tmp_path)
    assert all(before[s] != after[s] for s in NAMES)


EDITS = {
    "docstring": lambda source: re.sub(r'"""(?=\w)', '"""Reworded. ', source),  # every docstring's opening
    "comment": lambda source: "# A new comment, and every line below moves down.\n" + source,
    "code": lambda source: source + "\nEDITED = 1\n",
}


@pytest.mark.parametrize("module, edit, first_changed", [
    ("models/builders.py", "docstring", None),
    ("models/builders.py", "comment", None),
    ("models/builders.py", "code", "train"),
    ("models/layers.py", "code", "train"),  # reached through the models package's __init__
    ("models/generation.py", "code", "train"),  # imported inside a function of the training callbacks
    ("training/distribute/step.py", "code", "train"),  # two subpackages down
    ("data/readers.py", "code", "prepare"),
    ("cli.py", "code", None),  # no stage imports the CLI, predict or the public API
    ("tools/predict.py", "code", None),
    ("__init__.py", "code", None),
])
def test_a_code_edit_reruns_only_the_stages_that_run_that_code(sentiment_files, tmp_path, module, edit,
                                                                first_changed):
    source = shutil.copytree(cache.PACKAGE_DIR, tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    path = source / module
    original = path.read_text(encoding="utf-8")
    edited = EDITS[edit](original)
    assert edited != original, f"the {edit} edit found nothing to change in {module}"
    path.write_text(edited, encoding="utf-8")
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path))
    before, after = cache.stage_keys(config), cache.stage_keys(config, source)
    first = len(NAMES) if first_changed is None else NAMES.index(first_changed)
    for index, stage in enumerate(NAMES):
        assert (before[stage] != after[stage]) == (index >= first), stage


def test_a_new_module_imported_by_a_stage_joins_its_key(sentiment_files, tmp_path):
    source = shutil.copytree(cache.PACKAGE_DIR, tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path))
    before = cache.stage_keys(config, source)
    (source / "data" / "normalise.py").write_text("def fold(text):\n    return text.casefold()\n")
    assert cache.stage_keys(config, source) == before, "a module nothing imports is in no key"
    stage = source / "stages" / "tokenization.py"
    stage.write_text("from .. data import normalise  # noqa: F401\n" + stage.read_text(encoding="utf-8"))
    assert "data.normalise" in cache.stage_modules("stages.tokenization", source)
    keyed = cache.stage_keys(config, source)
    (source / "data" / "normalise.py").write_text("def fold(text):\n    return text.lower()\n")
    after = cache.stage_keys(config, source)
    assert keyed["prepare"] == after["prepare"] == before["prepare"]
    assert after["tokenize"] != keyed["tokenize"] != before["tokenize"]


def test_a_crash_mid_write_leaves_no_finished_looking_folder(tiny_config, tmp_path, monkeypatch):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash")
    assert not final.exists() and not list(tmp_path.glob(".out.tmp-*"))

    from pipeline.stages import prepare

    prepare.run(tiny_config, tmp_path / "work")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(subwords, "save", crash)  # the tokenizer is the first file tokenize writes
    with pytest.raises(OSError, match="disk full"):
        tokenization.run(tiny_config, tmp_path / "work")
    assert not stage_dir(tiny_config, tmp_path / "work", "tokenize").exists()
    assert not list((tmp_path / "work").rglob("*.tmp-*"))
