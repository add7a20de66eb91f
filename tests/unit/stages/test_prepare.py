import json

import pytest

from pipeline.config import load_config
from pipeline.data import splits
from pipeline.errors import DataError
from pipeline.stages import prepare
from pipeline.store.workdir import stage_dir
from tests.conftest import tiny_overrides


def test_prepare_writes_splits_labels_and_stats(tiny_config, tmp_path):
    result = prepare.run(tiny_config, tmp_path / "work")
    out = stage_dir(tiny_config, tmp_path / "work", "prepare")
    assert result.counts == {"train": 64, "validation": 20, "test": 16}
    assert json.loads((out / "labels.json").read_text()) == ["0", "1"]
    stats = json.loads((out / "stats.json").read_text())
    # Carved stratified: the 50/50 balance of train survives in the carved test split.
    assert stats["test"]["class_balance"] == {"0": 8, "1": 8}
    assert (out / "DONE").is_file()
    texts, labels = splits.read_examples(out / "train.jsonl")
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


def test_a_failed_rerun_keeps_the_previous_output(tiny_config, tmp_path, monkeypatch):
    # The same config, so the rerun (as `--force` makes one) is for the folder the first run
    # finished; new data would have a new key and a new folder, leaving the old one alone anyway.
    out = prepare.run(tiny_config, tmp_path / "work").output_dir
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def fail_halfway(path, examples, labels):
        path.write_text('{"text": "half a spl')
        raise OSError("disk full")

    monkeypatch.setattr(prepare, "_write_split", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        prepare.run(tiny_config, tmp_path / "work")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert not list((tmp_path / "work").rglob("*.tmp-*"))


def test_validation_with_only_some_training_classes_is_reported(tmp_path, caplog):
    rows = [f"{label} question {i} about {label}" for i in range(10) for label in range(6)]
    (tmp_path / "trec.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "sst2-dev.txt").write_text("0 a dull film\n1 a fine film\n")
    config = load_config(None, ["data.tfds=null", f"data.train={tmp_path / 'trec.txt'}",
                                f"data.validation={tmp_path / 'sst2-dev.txt'}", "data.test=null"])
    with caplog.at_level("WARNING", logger="pipeline.stages.prepare"):
        prepare.run(config, tmp_path / "work")
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "sst2-dev.txt: split validation has 2 of the 6 training classes (missing: 2, 3, 4, 5)" in message


def test_carving_follows_split_seed_not_train_seed(sentiment_files, tmp_path):
    def carved_test(*overrides):
        config = load_config(None, [*tiny_overrides(sentiment_files, tmp_path), *overrides])
        return (prepare.run(config, tmp_path / "work").output_dir / "test.jsonl").read_text()

    base = carved_test()
    assert carved_test("train.seed=7") == base
    assert carved_test("data.split_seed=7") != base


def test_detected_encoding_is_recorded_in_stats(sentiment_files, tmp_path):
    reviews = {"1": "ein sch\u00f6ner Film, gro\u00dfartig und fr\u00f6hlich",
               "0": "langweilig, \u00f6de, \u00fcber zwei Stunden \u00c4rger"}
    lines = [f"{label} {text} {i}\n" for i in range(40) for label, text in reviews.items()]
    sentiment_files["train"].write_bytes("".join(lines).encode("cp1252"))
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path))
    result = prepare.run(config, tmp_path / "work")
    stats = json.loads((result.output_dir / "stats.json").read_text())
    (encoding,) = stats["encodings"]["train"]
    assert encoding != "utf-8"
    assert stats["encodings"]["validation"] == {"utf-8": 1}
    texts = [t for name in ("train", "test") for t in splits.read_examples(result.output_dir / f"{name}.jsonl")[0]]
    assert sorted(texts) == sorted(line.split(" ", 1)[1].rstrip("\n") for line in lines)
