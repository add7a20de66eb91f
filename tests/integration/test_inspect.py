"""`pipeline inspect` on tiny trained models: files, MLflow, the statistics, and bad input."""

import html
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data import subwords
from pipeline.store.workdir import stage_dir
from pipeline.tools.inspection import inspector, replay
from tests.conftest import lm_overrides, tiny_overrides, write_corpus, write_label_text

TEXTS = ["a great and moving film", "awful , boring & <flat>"]


def _set(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def _trained(root: Path, overrides: list[str], experiment: str):
    """`pipeline run` on a tiny config, then the CLI arguments that reach the same model and MLflow store."""
    common = ["--workdir", str(root / "work"), "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
              "--experiment", experiment, *_set(overrides)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow writes artifacts under ./mlruns
        result = CliRunner().invoke(main, ["run", *common], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return common


def _inspect(root: Path, common: list[str], *args: str):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        return CliRunner().invoke(main, ["inspect", *common, *args])


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect-sentiment")
    files = {"train": write_label_text(root / "train.txt", 80, 1),
             "validation": write_label_text(root / "dev.txt", 20, 2)}
    overrides = tiny_overrides(files, root)
    return root, overrides, _trained(root, overrides, "inspect")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect-lm")
    overrides = lm_overrides(write_corpus(root / "corpus.txt"), root)
    return root, overrides, _trained(root, overrides, "inspect-lm")


def _parent_run(root: Path, experiment: str):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return client, client.get_run(parent.info.run_id)


def _pieces(root: Path, overrides: list[str], text: str) -> list[str]:
    config = load_config(None, overrides)
    sp = subwords.load(stage_dir(config, root / "work", "tokenize") / "tokenizer.model")
    return [p.replace("▁", " ").replace("\n", "↵") for p in sp.encode(text, out_type=str)]


def test_inspect_writes_pages_and_heatmaps_and_logs_them_to_the_run(sentiment_run):
    root, overrides, common = sentiment_run
    result = _inspect(root, common, "--text", TEXTS[0], "--text", TEXTS[1])
    assert result.exit_code == 0, result.output
    out = Path(result.output.splitlines()[0]).parent
    names = {p.name for p in out.iterdir()}
    assert {"text_1.html", "text_2.html", "text_1_tokens.png", "saturation.png", "correlated_units.png",
            "gradient_flow.png"} <= names
    layers = {f"bidirectional_{i}_{d}" for i in (0, 1) for d in ("forward", "backward")}
    assert {f"text_{n}_{layer}.png" for n in (1, 2) for layer in layers} <= names
    for n, text in enumerate(TEXTS, start=1):
        page = (out / f"text_{n}.html").read_text(encoding="utf-8")
        assert "http://" not in page and "https://" not in page  # opens from disk, offline
        assert "prediction: " in page
        assert all(f">{html.escape(piece)}</span>" in page for piece in _pieces(root, overrides, text))
        views = json.loads(page.split('<script type="application/json" id="data">')[1].split("</script>")[0])
        assert set(views["views"]) == {f"bidirectional_{i}/{d}" for i in (0, 1) for d in ("forward", "backward")}
    client, parent = _parent_run(root, "inspect")
    logged = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "inspect")}
    assert logged == names  # DONE too: which run made the folder
    assert 0 <= parent.data.metrics["inspect.bidirectional_0.forward.forget_gate.above_0.9"] <= 1
    assert "inspect.label_correlation.max_abs_r" in parent.data.metrics
    history = client.get_metric_history(parent.info.run_id, "inspect.gradient_norm")
    assert len(history) == json.loads((out / "gradient_flow.json").read_text())["tokens"]
    assert result.output.strip().endswith(f"logged to MLflow run {parent.info.run_id} under inspect/")


def test_inspect_a_language_model_shows_surprisal(lm_run):
    root, overrides, common = lm_run
    text = "ROMEO:\nthe night is sweet"
    result = _inspect(root, common, "--text", text)
    assert result.exit_code == 0, result.output
    out = Path(result.output.splitlines()[0]).parent
    page = (out / "text_1.html").read_text(encoding="utf-8")
    assert "bits per character" in page
    assert all(f">{html.escape(piece)}</span>" in page for piece in _pieces(root, overrides, text))
    names = {p.name for p in out.iterdir()}
    assert {"text_1_lstm_0_forward.png", "text_1_lstm_1_forward.png", "text_1_tokens.png", "saturation.png"} <= names
    client, parent = _parent_run(root, "inspect-lm")
    assert "inspect/text_1.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "inspect")}
    assert "label" not in json.loads((out / "correlated_units.json").read_text())  # a language model has no labels


@pytest.mark.parametrize(("text", "message"), [
    ("   ", "Error: text 1 is empty; give some words to inspect"),
    ("日本語 ☃", "Error: text 1 ('日本語 ☃') is only pieces this tokenizer does not know"),
])
def test_bad_texts_are_one_line_errors(sentiment_run, text, message):
    root, _, common = sentiment_run
    result = _inspect(root, common, "--text", text)
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1, result.output


def _one_error_line(result) -> str:
    """The error, checked to be one line at the end with no traceback (MLflow may log lines before it)."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = result.output.splitlines()[-1]
    assert error.startswith("Error: ")
    return error


def test_inspect_before_training_names_the_command_that_trains(tmp_path, sentiment_files):
    common = ["--workdir", str(tmp_path / "work"), *_set(tiny_overrides(sentiment_files, tmp_path))]
    result = CliRunner().invoke(main, ["inspect", *common, "--text", "a film"])
    error = _one_error_line(result)
    assert "no finished train output" in error and "run `pipeline train`" in error
    no_text = CliRunner().invoke(main, ["inspect", *common])
    assert no_text.output.endswith("give --text TEXT (repeatable) or --input FILE\n")


def test_compare_cells_refuses_cells_that_would_not_fit_before_training(tmp_path, sentiment_files):
    common = ["--workdir", str(tmp_path / "work"), *_set(tiny_overrides(sentiment_files, tmp_path)),
              "--set", "model.units=60000", "--set", "model.cell=simple_rnn"]
    result = CliRunner().invoke(main, ["inspect", *common, "--compare-cells"])
    error = _one_error_line(result)
    assert error.startswith("Error: --compare-cells: training with model.cell=lstm would need about")
    assert not (tmp_path / "work").exists()  # refused before any stage ran


def test_memory_estimate_orders_the_cells_by_their_gates(tiny_config):
    need = {cell: inspector.training_bytes(tiny_config, cell, 60) for cell in ("lstm", "gru", "simple_rnn")}
    assert need["simple_rnn"] < need["gru"] < need["lstm"]


def _trace(cell: np.ndarray, gate: np.ndarray, mask: np.ndarray) -> replay.GateTrace:
    return replay.GateTrace("lstm_0", "forward", gate, gate, gate, gate, cell, cell, mask)


def test_correlated_units_finds_a_counter_and_a_label_unit():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 1, 1, 0])
    mask = np.ones((6, 9), bool)
    mask[2, 5:] = False
    cell = rng.normal(size=(6, 9, 3))
    cell[:, :, 1] = np.arange(9)  # counts positions
    cell[:, -1, 2] = labels + 0.01 * rng.normal(size=6)  # ends in the label
    found = inspector.correlated_units([_trace(cell, np.full((6, 9, 3), 0.5), mask)], labels)
    assert (found["position"][0]["unit"], round(found["position"][0]["r"], 6)) == (1, 1.0)
    assert found["label"][0]["unit"] == 2 and found["label"][0]["r"] > 0.99


def test_saturation_counts_real_steps_only():
    mask = np.array([[True, True, True, False]])
    gate = np.array([[[0.05], [0.95], [0.5], [0.99]]])  # the padded step would count as saturated
    stats = inspector.saturation([_trace(np.zeros((1, 4, 1)), gate, mask)])["lstm_0/forward"]
    assert stats["forget_gate.below_0.1"].tolist() == pytest.approx([1 / 3])
    assert stats["forget_gate.above_0.9"].tolist() == pytest.approx([1 / 3])


def test_compare_cells_trains_each_cell_and_draws_their_curves(sentiment_run):
    root, _, common = sentiment_run
    result = _inspect(root, common, "--compare-cells")  # the LSTM is the fixture's; GRU and SimpleRNN train here
    assert result.exit_code == 0, result.output
    # Training prints Keras's epoch lines first; the listing of the written files ends the output.
    written = Path(next(line for line in result.output.splitlines() if line.endswith("compare_cells.json")))
    curves = json.loads(written.read_text())
    assert set(curves["curves"]) == {"lstm", "gru", "simple_rnn"}
    for curve in curves["curves"].values():
        assert len(curve["gradient_norm_by_distance"]) == curves["tokens"]
        assert np.isfinite(curve["gradient_norm_by_distance"]).all() and "test_accuracy=" in curve["note"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("inspect").experiment_id])
    parents = {r.info.run_name.rsplit("-", 1)[0]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"tiny-bilstm-2x8", "tiny-bigru-2x8", "tiny-birnn-2x8"}  # the normal stages, per cell
    logged = {a.path for a in client.list_artifacts(parents["tiny-bilstm-2x8"].info.run_id, "inspect")}
    assert {"inspect/compare_cells.png", "inspect/compare_cells.json"} <= logged


def test_the_cell_legend_names_the_validation_figure_when_there_is_no_test_split():
    assert inspector._headline({"test_loss": 0.3, "test_accuracy": 0.8512}) == "test_accuracy=0.851"
    assert inspector._headline({"val_loss": 0.39, "val_accuracy": 0.8417}) == "val_accuracy=0.842"
    assert inspector._headline({"val_bits_per_char": 2.4567}) == "val_bits_per_char=2.457"
