import json

import pytest

from pipeline import prepare
from pipeline.config import load_config
from pipeline.errors import DataError
from pipeline.workdir import stage_dir

from .conftest import tiny_overrides


def test_prepare_writes_splits_labels_and_stats(tiny_config, tmp_path):
    result = prepare.run(tiny_config, tmp_path / "work")
    out = stage_dir(tiny_config, tmp_path / "work", "prepare")
    assert result.counts == {"train": 64, "validation": 20, "test": 16}
    assert json.loads((out / "labels.json").read_text()) == ["0", "1"]
    stats = json.loads((out / "stats.json").read_text())
    # Carved stratified: the 50/50 balance of train survives in the carved test split.
    assert stats["test"]["class_balance"] == {"0": 8, "1": 8}
    assert (out / "DONE").is_file()
    texts, labels = prepare.read_examples(out / "train.jsonl")
    assert len(texts) == 64 and set(labels) == {0, 1}


def test_carving_is_deterministic_for_a_seed(tiny_config, tmp_path):
    prepare.run(tiny_config, tmp_path / "a")
    prepare.run(tiny_config, tmp_path / "b")
    a, b = (stage_dir(tiny_config, tmp_path / name, "prepare") / "test.jsonl" for name in "ab")
    assert a.read_text() == b.read_text()


def test_multiclass_string_labels(tmp_path):
    rows = [f"{label}\tquestion {i} about {label}" for i in range(12) for label in ("DESC", "LOC", "NUM")]
    (tmp_path / "q.tsv").write_text("label\ttext\n" + "\n".join(rows) + "\n")
    config = load_config(None, ["data.tfds=null", f"data.train={tmp_path / 'q.tsv'}", "data.test=null",
                                "data.validation_fraction=0.25", "data.test_fraction=0.25"])
    result = prepare.run(config, tmp_path / "work")
    assert result.labels == ["DESC", "LOC", "NUM"]
    assert result.counts == {"train": 18, "validation": 9, "test": 9}


def test_numeric_labels_sort_numerically(tmp_path):
    (tmp_path / "t.txt").write_text("".join(f"{label} text {label} {i}\n" for i in range(4) for label in (2, 10, 1)))
    config = load_config(None, ["data.tfds=null", f"data.train={tmp_path / 't.txt'}", "data.test=null",
                                "data.validation_fraction=0.25", "data.test_fraction=0.25"])
    assert prepare.run(config, tmp_path / "work").labels == ["1", "2", "10"]


def test_unseen_label_in_validation_fails_and_writes_nothing(sentiment_files, tmp_path):
    with sentiment_files["validation"].open("a") as f:
        f.write("7 a label nobody trained on\n")
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path))
    with pytest.raises(DataError, match=r"dev\.txt: split validation has labels the training split never saw: 7"):
        prepare.run(config, tmp_path / "work")
    assert not stage_dir(config, tmp_path / "work", "prepare").exists()
    assert not list((tmp_path / "work").rglob("*.tmp-*"))


def test_a_failed_rerun_keeps_the_previous_output(tiny_config, sentiment_files, tmp_path):
    prepare.run(tiny_config, tmp_path / "work")
    before = stage_dir(tiny_config, tmp_path / "work", "prepare")
    sentiment_files["train"].write_bytes(b"1 ok\n0 caf\xe9\n")
    with pytest.raises(DataError, match=r"train\.txt:2: bytes not valid"):
        prepare.run(tiny_config, tmp_path / "work")
    # New content, new key: nothing was written for it, and the earlier output is untouched.
    assert not stage_dir(tiny_config, tmp_path / "work", "prepare").exists()
    assert (before / "DONE").is_file()
