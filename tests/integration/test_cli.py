"""The CLI end to end through Click's CliRunner, with MLflow tracking in tmp_path."""

import json
import re

import click
import mlflow
import pytest
from click.testing import CliRunner

from pipeline import models
from pipeline.cli import main
from pipeline.data import splits, subwords
from tests.conftest import tiny_overrides

STAGES = ["prepare", "tokenize", "train", "evaluate", "export"]


def _invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _set(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from tests.conftest import write_label_text

    root = tmp_path_factory.mktemp("cli")
    files = {"train": write_label_text(root / "train.txt", 80, 1),
             "validation": write_label_text(root / "dev.txt", 20, 2)}
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow writes artifacts under ./mlruns
        result = _invoke("run", "--workdir", str(root / "work"), "--tracking-uri", uri, "--experiment", "tiny",
                         *_set(tiny_overrides(files, root)))
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    return root, result, client, runs


def test_one_parent_run_with_a_nested_run_per_stage(finished_run):
    _, _, _, runs = finished_run
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    fingerprint = parent.data.tags["config_fingerprint"]
    assert parent.info.run_name == f"tiny-bilstm-2x8-{fingerprint}" and parent.info.status == "FINISHED"
    assert re.fullmatch(r"[0-9a-f]{6}", fingerprint)
    # The tiny model's LSTMs are all cuDNN-eligible, so the kernel follows the device alone.
    gpu = models.gpu_visible()
    assert parent.data.tags["device"] == ("gpu" if gpu else "cpu")
    assert parent.data.tags["lstm_kernel"] == ("cudnn" if gpu else "generic")
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in children.values())


def _by_name(runs):
    """Runs by name; the parent run (named after the model and config) under "parent"."""
    return {("parent" if "mlflow.parentRunId" not in r.data.tags else r.info.run_name): r for r in runs}


def test_params_tags_and_test_metrics_on_parent_and_evaluate(finished_run):
    _, result, _, runs = finished_run
    runs = _by_name(runs)
    parent, evaluate = runs["parent"], runs["evaluate"]
    assert parent.data.params["model.units"] == "8"
    assert parent.data.params["train.epochs"] == "2"
    assert parent.data.tags["task"] == "sentiment" and parent.data.tags["dataset"] == "train.txt"
    assert "tensorflow_version" in parent.data.tags and "keras_version" in parent.data.tags
    for key in ("test_accuracy", "test_macro_f1", "test_auc", "test_loss"):
        assert parent.data.metrics[key] == evaluate.data.metrics[key]
    # A fraction of the 16 examples carved for test (20% of 80), not just any number in [0, 1].
    assert (parent.data.metrics["test_accuracy"] * 16).is_integer()
    assert f"test_accuracy={parent.data.metrics['test_accuracy']:.4f}" in result.output


def test_per_epoch_metrics_use_the_epoch_as_step(finished_run):
    root, _, client, runs = finished_run
    train = _by_name(runs)["train"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(train.info.run_id, key)] == [0, 1]
    assert 0.0 < train.data.metrics["padding_fraction"] < 1.0  # the tiny texts differ in length
    assert train.data.tags["lstm_kernel"] == ("cudnn" if models.gpu_visible() else "generic")
    # Counted again from the stage's own files: some tiny texts run past train.max_length=16 tokens.
    keys = {name: run.data.tags["stage_key"] for name, run in _by_name(runs).items() if name != "parent"}
    texts, _ = splits.read_examples(root / "work" / "prepare" / keys["prepare"] / "train.jsonl")
    sp = subwords.load(root / "work" / "tokenize" / keys["tokenize"] / "tokenizer.model")
    lengths = [len(ids) for ids in subwords.encode(sp, texts)]
    tokenize = _by_name(runs)["tokenize"]
    assert tokenize.data.metrics["train_truncated"] == sum(n > 16 for n in lengths) > 0
    assert tokenize.data.metrics["train_tokens"] == sum(min(n, 16) for n in lengths)


def test_artifacts(finished_run):
    _, _, client, runs = finished_run
    runs = _by_name(runs)

    def listed(run, path=""):
        return {a.path for a in client.list_artifacts(runs[run].info.run_id, path)}

    assert "config.yaml" in listed("parent")
    assert {"tokenizer/tokenizer.model", "tokenizer/tokenizer.vocab"} <= listed("tokenize", "tokenizer")
    assert {"evaluate/metrics.json", "evaluate/confusion_matrix.png", "evaluate/curve_loss.png",
            "evaluate/curve_accuracy.png"} <= listed("evaluate", "evaluate")
    assert "saved_model/saved_model.pb" in listed("export", "saved_model")


def test_predict_command_on_the_export(finished_run):
    root = finished_run[0]
    result = _invoke("predict", str(root / "models" / "tiny-bilstm-2x8"), "a great film", "", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["text"] for r in rows] == ["a great film", ""]
    for row in rows:
        assert row["probabilities"].keys() == {"0", "1"} and sum(row["probabilities"].values()) == pytest.approx(1)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


def test_run_ends_with_the_commands_to_use_the_model_and_open_the_ui(finished_run):
    root, result, _, _ = finished_run
    lines = result.output.strip().splitlines()
    export = root / "models" / "tiny-bilstm-2x8" / "1"
    assert lines[-3:] == ["Next:", f'  pipeline predict {export} "a gripping, funny film" "flat and lifeless"',
                          f"  pipeline ui --tracking-uri sqlite:///{root / 'mlflow.db'}    # the MLflow UI"]
    # The printed line works as printed.
    predicted = _invoke("predict", str(export), "a gripping, funny film")
    assert predicted.exit_code == 0, predicted.output


def test_compare_prints_the_runs_with_params_and_metrics(finished_run):
    root = finished_run[0]
    result = _invoke("compare", "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--experiment", "tiny")
    assert result.exit_code == 0, result.output
    header, row = result.output.strip().splitlines()
    assert header.split()[:2] == ["run", "status"] and "test_accuracy" in header and "model.units" in header
    assert row.split()[0].startswith("tiny-bilstm-2x8-") and row.split()[1] == "FINISHED"
    parent = [r for r in finished_run[3] if "mlflow.parentRunId" not in r.data.tags][0]
    assert f"{parent.data.metrics['test_accuracy']:.4f}" in row.split()


def test_compare_unknown_experiment_is_one_line(finished_run):
    uri = f"sqlite:///{finished_run[0] / 'mlflow.db'}"
    result = CliRunner().invoke(main, ["compare", "--tracking-uri", uri, "--experiment", "nope"])
    assert result.exit_code == 1
    assert result.output == f"Error: no MLflow experiment named 'nope' at {uri}; pass --experiment or --tracking-uri\n"


def test_ui_serves_the_tracking_store(finished_run):
    import socket
    import subprocess
    import time
    import urllib.request

    from pipeline import tracking

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow.set_tracking_uri(f"sqlite:///{finished_run[0] / 'mlflow.db'}")
    server = subprocess.Popen(tracking.ui_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not answer within 90 s"
                time.sleep(1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_every_command_and_option_has_help():
    assert {*STAGES, "run", "predict", "generate", "compare", "ui", "serve", "sweep", "launch"} <= set(main.commands)
    for name, command in main.commands.items():
        result = _invoke(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
        assert command.help, f"{name} has no help text"
        undocumented = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert undocumented == [], f"{name}: options without help: {undocumented}"


@pytest.mark.parametrize("make_args, message", [
    (lambda f, t: ["--set", "train.epoch=3"], "unknown config key train.epoch; did you mean train.epochs?"),
    (lambda f, t: ["--set", f"data.train={t / 'missing.txt'}"],
     "{tmp}/missing.txt: no such file or folder; check the data.train/validation/test paths"),
    (lambda f, t: ["--set", "model.units=many"], "config key model.units must be int; got 'many' (str)"),
])
def test_bad_input_is_one_line_and_nonzero(sentiment_files, tmp_path, make_args, message):
    args = ["prepare", "--workdir", str(tmp_path / "work"), *_set(tiny_overrides(sentiment_files, tmp_path)),
            *make_args(sentiment_files, tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    # Only MLflow's own log lines (creating the store, the first time) may come before the error.
    *before, last = result.output.splitlines()
    assert last == f"Error: {message.format(tmp=tmp_path)}"
    assert all(re.match(r"[\d/]+ [\d:]+ INFO mlflow\.", line) for line in before), result.output
    assert not list((tmp_path / "work").rglob("DONE"))


def test_unreachable_tracking_server_fails_fast_before_any_work(sentiment_files, tmp_path):
    import time

    started = time.monotonic()
    result = CliRunner().invoke(main, ["prepare", "--workdir", str(tmp_path / "work"),
                                       "--tracking-uri", "http://127.0.0.1:9",
                                       *_set(tiny_overrides(sentiment_files, tmp_path))])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert "Error: MLflow tracking server http://127.0.0.1:9 is unreachable" in result.output
    assert not (tmp_path / "work").exists()


def test_stage_out_of_order_says_what_to_run(tmp_path):
    result = CliRunner().invoke(main, ["train", "--workdir", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "run `pipeline tokenize` (or `pipeline run`) with the same --config, --set and --workdir" in result.output
