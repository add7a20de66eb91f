"""The exported SavedModel, reloaded in a fresh Python process, matches the Keras model."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.data import subwords
from pipeline.errors import ExportError
from pipeline.stages import export, prepare, tokenization, train
from pipeline.store.workdir import stage_dir
from pipeline.tools import predict

TEXTS = ["a great and moving film", "", "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001f600", "a bad , dull film",
         "great " * 40]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from pipeline.config import load_config
    from tests.conftest import tiny_overrides, write_label_text

    root = tmp_path_factory.mktemp("export")
    files = {"train": write_label_text(root / "train.txt", 80, 1),
             "validation": write_label_text(root / "dev.txt", 20, 2)}
    config = load_config(None, tiny_overrides(files, root))
    work = root / "work"
    for stage in (prepare, tokenization, train):
        stage.run(config, work)
    return config, work, export.run(config, work)


def _keras_probabilities(config, work, texts):
    sp = subwords.load(stage_dir(config, work, "tokenize") / "tokenizer.model")
    ids = subwords.encode(sp, texts, max_length=config.train.max_length)
    padded = keras.utils.pad_sequences(ids, padding="post", value=0)
    model = keras.saving.load_model(stage_dir(config, work, "train") / "model.keras")
    return model.predict(padded, verbose=0)


def test_numbered_layout_and_next_version(exported):
    config, work, result = exported
    assert result.path.name == "1" and result.path.parent.name == "tiny-bilstm-2x8"
    assert (result.path / "saved_model.pb").is_file()
    assert export.next_version(result.path.parent) == 2


def test_exports_of_one_run_name_at_once_get_different_versions(tmp_path):
    first, first_claim = export.claim_version(tmp_path / "run")
    second, _ = export.claim_version(tmp_path / "run")  # another process, before the first one finished
    assert (first, second) == (1, 2)
    first_claim.rmdir()  # the first export failed: its number is free, the held claim is not
    assert export.next_version(tmp_path / "run") == 3


def test_reloaded_in_a_fresh_process_gives_the_same_probabilities(exported):
    config, work, result = exported
    script = (
        "import json, sys, tensorflow as tf, tensorflow_text\n"
        "model = tf.saved_model.load(sys.argv[1])\n"
        "out = model.signatures['serving_default'](text=tf.constant(json.loads(sys.argv[2])))\n"
        "print(json.dumps({'p': out['probabilities'].numpy().tolist(),"
        " 'label': [s.decode() for s in out['label'].numpy()]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(result.path), json.dumps(TEXTS)],
                          capture_output=True, text=True, check=True)
    served = json.loads(done.stdout.strip().splitlines()[-1])
    expected = _keras_probabilities(config, work, TEXTS)
    assert np.abs(np.array(served["p"]) - expected).max() < 1e-5
    assert served["label"] == [["0", "1"][i] for i in expected.argmax(axis=1)]


def test_predict_uses_the_export(exported):
    config, work, result = exported
    rows = predict.classify(result.path.parent, TEXTS[:2])
    assert [r["text"] for r in rows] == TEXTS[:2]
    assert set(rows[0]["probabilities"]) == {"0", "1"}
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-5


def test_predict_refuses_what_is_not_an_export(tmp_path, exported):
    with pytest.raises(ExportError, match="is not a SavedModel export"):
        predict.classify(tmp_path, ["x"])
    with pytest.raises(ExportError, match="is a sentiment export, not a lm one"):
        predict.load(exported[2].path, "lm")
