"""`model.cell`: the same data and training with an LSTM, a GRU or a SimpleRNN, and the kernel
report for each."""

import keras
import numpy as np
import pytest

from pipeline import config as config_lib
from pipeline import models
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models import generation
from pipeline.stages import export, prepare, tokenization, train
from pipeline.tools import predict
from tests.conftest import lm_overrides, tiny_overrides, write_corpus

REASONS = {"lstm": "eligible", "gru": "eligible", "simple_rnn": "SimpleRNN has no cuDNN kernel"}
KINDS = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU, "simple_rnn": keras.layers.SimpleRNN}


@pytest.mark.parametrize("cell", models.CELLS)
def test_kernel_report_is_right_for_each_cell(cell):
    model = models.build_sentiment_lstm(30, 2, units=4, embedding_dim=4, layers=2, cell=cell)
    report = models.cudnn_report(model)
    assert [r.layer for r in report] == [f"{d}_{cell}_{i}" for i in (0, 1) for d in ("forward", "backward")]
    assert {r.reason for r in report} == {REASONS[cell]}
    assert all(r.cudnn_eligible == (cell != "simple_rnn") for r in report)
    assert all(isinstance(layer, KINDS[cell]) for layer in models.recurrent_layers(model))
    assert len(models.lstm_layers(model)) == (4 if cell == "lstm" else 0)


def test_report_names_a_gru_that_lost_cudnn():
    gru = keras.Sequential([keras.Input((None, 3)), keras.layers.GRU(4, reset_after=False, recurrent_dropout=0.1)])
    (report,) = models.cudnn_report(gru)
    assert not report.cudnn_eligible
    assert report.reason == "reset_after=False; recurrent_dropout=0.1"


def test_run_names_carry_the_cell_unless_it_is_an_lstm():
    names = {cell: config_lib.run_name(load_config(None, ["name=sst2", f"model.cell={cell}"])) for cell in models.CELLS}
    assert names == {"lstm": "sst2-bilstm-2x128", "gru": "sst2-bigru-2x128", "simple_rnn": "sst2-birnn-2x128"}
    with pytest.raises(ConfigError, match="model.cell must be one of lstm, gru, simple_rnn"):
        load_config(None, ["model.cell=transformer"])


@pytest.mark.parametrize("cell", models.CELLS)
def test_each_cell_trains_and_exports_a_sentiment_model(cell, sentiment_files, tmp_path):
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path) + [
        f"model.cell={cell}", "model.layers=1", "train.epochs=1"])
    work = tmp_path / "work"
    for stage in (prepare, tokenization):
        stage.run(config, work)
    result = train.run(config, work)
    model = keras.saving.load_model(result.model_path)
    assert {type(layer) for layer in models.recurrent_layers(model)} == {KINDS[cell]}
    exported = export.run(config, work).path
    assert exported.parent.name == config_lib.run_name(config)
    rows = predict.classify(exported, ["a great film", "a dull mess"])
    assert all(sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5) for row in rows)


@pytest.mark.parametrize("cell", ["gru", "simple_rnn"])
def test_each_cell_trains_and_exports_a_language_model(cell, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    config = load_config(None, lm_overrides(corpus, tmp_path) + [f"model.cell={cell}", "model.layers=1",
                                                                 "train.epochs=1"])
    work = tmp_path / "work"
    for stage in (prepare, tokenization):
        stage.run(config, work)
    model = keras.saving.load_model(train.run(config, work).model_path)
    # The decoder carries one state per layer (h), and its step gives the full model's logits.
    decoder = generation.build_decoder(model)
    ids = np.array([[2, 7, 9, 11]], dtype="int32")
    step_logits, _ = decoder([ids, np.zeros((1, 16), "float32")])
    np.testing.assert_allclose(step_logits, model(ids)[:, -1], atol=1e-5)
    exported = export.run(config, work).path
    texts, _ = predict.generate(exported, ["ROMEO:"], max_tokens=5, temperature=0.8, top_k=0, seed=1)
    assert texts[0].startswith("ROMEO:") and len(texts[0]) > len("ROMEO:")


@pytest.mark.parametrize("cell", models.CELLS)
def test_forget_bias_starts_the_gate_that_keeps_the_state(cell):
    def biases(values):
        model = models.build_model(load_config(None, ["model.units=3", "model.layers=1", f"model.cell={cell}",
                                                      *values]), 20, 2)
        return [np.asarray(layer.cell.bias) for layer in models.recurrent_layers(model)]

    for default, chosen in zip(biases([]), biases(["model.forget_bias=4"]), strict=True):
        if cell == "lstm":  # input, forget, candidate, output; Keras starts the forget gate at 1
            assert default[3:6].tolist() == [1.0] * 3 and chosen[3:6].tolist() == [4.0] * 3
            assert chosen[:3].tolist() + chosen[6:].tolist() == [0.0] * 9
        elif cell == "gru":  # z, r, h for the input and the recurrent bias; only z's input bias moves
            assert chosen[0, :3].tolist() == [4.0] * 3 and not chosen[0, 3:].any() and not chosen[1].any()
        else:
            np.testing.assert_array_equal(default, chosen)  # no gate to start
