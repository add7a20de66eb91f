"""`pipeline sweep`: trials as `pipeline run`s in an Optuna study, nested under a sweep run in MLflow.

Trials train a one-layer LSTM of 8 units on the tiny sentiment files (a few seconds each). The
process tests run the real `pipeline` command in subprocesses, with bounded waits, and kill what
is left in teardown.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from pipeline.cli import main
from pipeline.config import load_config, with_values
from pipeline.errors import SweepError
from pipeline.stages import train
from pipeline.store.workdir import is_finished, producer, stage_dir
from pipeline.tools import sweep
from pipeline.tools.sweep import trials
from tests.conftest import PRESETS_DIR, tiny_overrides, write_label_text

PIPELINE = str(Path(sys.executable).parent / "pipeline")
# A one-layer LSTM traces in a third of the time of the tiny two-layer BiLSTM.
SMALL = ["model.layers=1", "model.bidirectional=false", "train.deterministic=true"]
RANDOM_SPACE = """
objective: {metric: val_loss}
sampler: random
pruner: none
params:
  model.dropout: {float: [0.0, 0.5]}
  train.learning_rate: {float: [1.0e-3, 3.0e-2], log: true}
"""


def _set(overrides):
    return [arg for item in overrides for arg in ("--set", item)]


def _sweep_args(root: Path, overrides: list[str], space: str, trials: int, study: str = "s") -> list[str]:
    (root / "space.yaml").write_text(space, encoding="utf-8")
    return ["sweep", "--space", str(root / "space.yaml"), "--trials", str(trials), "--study", study,
            "--storage", f"sqlite:///{root / 'optuna.db'}", "--workdir", str(root / "work"),
            "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}", "--experiment", "sweep", *_set(overrides)]


def _without_tracking_uri(args: list[str]) -> list[str]:
    """The tests that stop before any work track in the session's store, which exists already."""
    index = args.index("--tracking-uri")
    return args[:index] + args[index + 2:]


def _study(root: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def _runs(root: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return client.search_runs([client.get_experiment_by_name("sweep").experiment_id], max_results=1000)


def _trial_runs(runs) -> dict[int, mlflow.entities.Run]:
    return {int(r.data.tags["sweep.trial"]): r for r in runs if "sweep.trial" in r.data.tags}


def _children(runs, parent) -> dict[str, mlflow.entities.Run]:
    return {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


@pytest.fixture(scope="module")
def four_trials(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    files = {"train": write_label_text(root / "train.txt", 80, 1),
             "validation": write_label_text(root / "dev.txt", 20, 2)}
    overrides = [*tiny_overrides(files, root), *SMALL]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow writes artifacts under ./mlruns
        result = CliRunner().invoke(main, _sweep_args(root, overrides, RANDOM_SPACE, trials=4),
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root, overrides, result


def test_four_trials_are_runs_nested_under_the_sweep_run(four_trials):
    root, _, _ = four_trials
    trials = _study(root).get_trials()
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(4)]
    runs = _runs(root)
    sweeps = [r for r in runs if r.info.run_name == "sweep-s"]
    assert len(sweeps) == 1 and sweeps[0].info.status == "FINISHED"
    assert sweeps[0].data.tags["sweep.study"] == "s" and "mlflow.parentRunId" not in sweeps[0].data.tags
    nested = _children(runs, sweeps[0])
    assert len(nested) == 4 and set(_trial_runs(runs)) == {0, 1, 2, 3}
    for trial in trials:
        run = _trial_runs(runs)[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == sweeps[0].info.run_id
        assert run.data.tags["sweep.study"] == "s" and run.data.tags["sweep.state"] == "COMPLETE"
        assert run.info.status == "FINISHED"
        for key, value in trial.params.items():
            assert run.data.params[key] == str(value)
        assert run.data.metrics["test_accuracy"] == trial.user_attrs["test_accuracy"]
        assert run.data.metrics["val_loss"] == trial.value  # the objective, for the UI's compare view
        assert sorted(_children(runs, run)) == ["evaluate", "export", "prepare", "tokenize", "train"]
    # Prepare and tokenize read none of the swept keys: made once, reused by the other trials.
    stage_runs = [r for r in runs if r.info.run_name == "tokenize"]
    assert sorted(r.data.tags.get("cache_hit", "false") for r in stage_runs) == ["false", "true", "true", "true"]


def test_the_table_lists_the_trials_best_first_and_ends_with_the_run_line(four_trials):
    root, _, result = four_trials
    study = _study(root)
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    assert lines[header].split() == ["trial", "state", "model.dropout", "train.learning_rate", "val_loss",
                                     "test_accuracy", "duration"]
    rows = [line.split() for line in lines[header + 1:header + 5]]
    by_value = sorted(study.get_trials(), key=lambda t: t.value)
    assert [int(row[0]) for row in rows] == [t.number for t in by_value]
    assert [row[4] for row in rows] == [f"{t.value:.4f}" for t in by_value]
    best_yaml = root / "work" / "sweeps" / "s" / "best.yaml"
    assert f"  pipeline run --config {best_yaml} --workdir {root / 'work'}" in lines


def test_best_yaml_runs_and_reproduces_the_best_validation_loss(four_trials):
    root, overrides, _ = four_trials
    best = _study(root).best_trial
    best_yaml = root / "work" / "sweeps" / "s" / "best.yaml"
    assert load_config(best_yaml) == with_values(load_config(None, overrides), best.params)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    sweep_run = next(r for r in _runs(root) if r.info.run_name == "sweep-s")
    assert {"best.yaml", "history.png", "importance.png"} <= {a.path for a in client.list_artifacts(
        sweep_run.info.run_id)}
    # A fresh work folder and store: everything is trained again, from best.yaml alone.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result = CliRunner().invoke(main, ["run", "--config", str(best_yaml), "--workdir", str(root / "again"),
                                           "--tracking-uri", f"sqlite:///{root / 'again.db'}"],
                                    catch_exceptions=False)
    assert result.exit_code == 0, result.output
    again = train.load(load_config(best_yaml), root / "again")  # trained there, not found in the sweep's folder
    assert again.best_metrics["val_loss"] == best.value


def test_compare_lists_the_trials_of_a_sweep(four_trials):
    root = four_trials[0]
    result = CliRunner().invoke(main, ["compare", "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
                                       "--experiment", "sweep"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    header, *rows = result.output.strip().splitlines()
    assert len(rows) == 4 and all(row.split()[1] == "FINISHED" for row in rows)
    accuracies = sorted((t.user_attrs["test_accuracy"] for t in _study(root).get_trials()), reverse=True)
    assert [float(row.split()[header.split().index("test_accuracy")]) for row in rows] == pytest.approx(
        accuracies, abs=5e-5)


def test_a_trial_worse_than_the_median_after_an_epoch_is_pruned_there(sentiment_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = [*tiny_overrides(sentiment_files, tmp_path), *SMALL, "train.epochs=3", "train.patience=5"]
    space = """
objective: {metric: val_loss, direction: minimize}
sampler: random
pruner: {median: {startup_trials: 1, warmup_epochs: 0}}
params:
  train.learning_rate: {float: [1.0e-6, 5.0e-2], log: true}
"""
    args = _sweep_args(tmp_path, overrides, space, trials=2)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="minimize")
    study.enqueue_trial({"train.learning_rate": 0.03})  # learns in its first epoch
    study.enqueue_trial({"train.learning_rate": 1e-6})  # barely moves: worse than the first at epoch 0
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output

    complete, pruned = _study(tmp_path).get_trials()
    assert complete.state == TrialState.COMPLETE and sorted(complete.intermediate_values) == [0, 1, 2]
    assert pruned.state == TrialState.PRUNED and sorted(pruned.intermediate_values) == [0]
    assert pruned.intermediate_values[0] > complete.intermediate_values[0]
    runs = _runs(tmp_path)
    parent = _trial_runs(runs)[1]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["sweep.pruned"] == "true" and parent.data.tags["sweep.state"] == "PRUNED"
    assert parent.data.metrics["val_loss"] == pytest.approx(pruned.intermediate_values[0])  # where it stopped
    stages = _children(runs, parent)
    assert sorted(stages) == ["prepare", "tokenize", "train"], "nothing runs after a pruned training"
    assert stages["train"].info.status == "KILLED" and stages["train"].data.tags["sweep.pruned"] == "true"
    history = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(
        stages["train"].info.run_id, "val_loss")
    assert [m.step for m in history] == [0]
    config = with_values(load_config(None, overrides), pruned.params)
    assert not is_finished(stage_dir(config, tmp_path / "work", "train"))
    assert not train.partial_dir(config, tmp_path / "work").exists(), "a pruned training is not resumed later"
    assert any(line.split()[:2] == ["1", "PRUNED"] and "pruned after epoch 0" in line
               for line in result.output.splitlines())


@pytest.fixture
def processes():
    """Subprocesses a test starts; any still running at teardown are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def test_two_processes_share_one_study_without_duplicates_or_overshoot(sentiment_files, tmp_path, processes):
    overrides = [*tiny_overrides(sentiment_files, tmp_path), *SMALL]
    command = [PIPELINE, *_sweep_args(tmp_path, overrides, RANDOM_SPACE, trials=4)]
    for _ in range(2):
        processes.append(subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(err[-3000:] for _, err in outputs)

    trials = _study(tmp_path).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len({t.number for t in complete}) == 4
    # A trial asked for in the same moment as the last one is given back, never run.
    assert all(t.user_attrs.get(sweep.LOST) == sweep.SURPLUS for t in trials if t not in complete)
    assert {t.user_attrs["pipeline.pid"] for t in complete} == {str(p.pid) for p in processes}
    runs = _runs(tmp_path)
    exports = [_children(runs, run)["export"] for run in _trial_runs(runs).values()]
    made_by = [producer(Path(run.data.tags["export_path"]))["run_id"] for run in exports]
    assert made_by == [run.info.run_id for run in exports], "every trial keeps the export it made"
    assert sorted(_trial_runs(runs)) == [t.number for t in complete]
    sweeps = {r.info.run_id for r in runs if r.info.run_name == "sweep-s"}
    assert len(sweeps) == 2 and {r.data.tags["mlflow.parentRunId"] for r in _trial_runs(runs).values()} <= sweeps


def test_kill_9_mid_trial_then_the_same_command_fails_that_trial_and_finishes_the_study(tmp_path, processes):
    files = {"train": write_label_text(tmp_path / "train.txt", 1600, seed=1),
             "validation": write_label_text(tmp_path / "dev.txt", 40, seed=2)}
    overrides = [*tiny_overrides(files, tmp_path), *SMALL, "train.epochs=3"]
    args = _sweep_args(tmp_path, overrides, RANDOM_SPACE, trials=1)
    killed = subprocess.Popen([PIPELINE, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    processes.append(killed)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "work" / "train").glob("*.partial/epoch-*")):  # an epoch of trial 0 is done
        assert killed.poll() is None, killed.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert _study(tmp_path).get_trials()[0].state == TrialState.RUNNING

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dead, finished = _study(tmp_path).get_trials()
    assert dead.state == TrialState.FAIL and dead.user_attrs[sweep.LOST] == "its process ended while it ran"
    assert finished.state == TrialState.COMPLETE
    runs = _runs(tmp_path)
    sweeps = {r.data.tags["pipeline.pid"]: r for r in runs if r.info.run_name == "sweep-s"}
    assert sweeps[str(killed.pid)].info.status == "KILLED" and len(sweeps) == 2
    dead_run = _trial_runs(runs)[0]
    assert dead_run.info.status == "KILLED" and dead_run.data.tags["sweep.state"] == "FAIL"
    assert _children(runs, dead_run)["train"].info.status == "KILLED"
    assert _trial_runs(runs)[1].info.status == "FINISHED"
    assert any(line.split()[:2] == ["0", "FAIL"] and "its process ended" in line for line in result.output.splitlines())


@pytest.mark.parametrize("space, message", [
    (RANDOM_SPACE.replace("model.dropout", "model.dropuot"),
     "{space}: params: unknown config key model.dropuot; did you mean model.dropout?"),
    (RANDOM_SPACE.replace("[0.0, 0.5]", "[0.5, 0.1]"),
     "{space}: params.model.dropout: the range [0.5, 0.1] is empty; write it [low, high]"),
    (RANDOM_SPACE.replace("{float: [0.0, 0.5]}", "{normal: [0.3, 0.1]}"),
     "{space}: params.model.dropout: {{'normal': [0.3, 0.1]}} is not a distribution this file can express; "
     "use {{int: [low, high]}} or {{float: [low, high]}} (with log: true or step: S if you like) or "
     "{{choice: [a, b, ...]}}"),
    (RANDOM_SPACE.replace("[0.0, 0.5]", "[0.1, 1.5]"),
     "{space}: params.model.dropout: config key model.dropout must be in [0, 1); got 1.5"),
    (RANDOM_SPACE.replace("sampler: random", "sampler: grid"),
     "{space}: sampler grid needs a list of values for params.model.dropout; use choice: [...] "
     "(or an int range) there, or sampler tpe or random"),
    (RANDOM_SPACE.replace("val_loss", "val_bits_per_char"),
     "{space}: objective val_bits_per_char is never logged for task sentiment; use one of val_loss, val_accuracy"),
    (RANDOM_SPACE.replace("val_loss", "test_accuracy"),
     "{space}: objective test_accuracy is a test metric; a sweep selects on validation metrics, or the test set "
     "stops being a test: use one of val_loss, val_accuracy"),
    (RANDOM_SPACE.replace("{metric: val_loss}", "{metric: val_loss, direction: maximize}"),
     "{space}: objective val_loss is better lower, so its direction is minimize, not maximize"),
], ids=["unknown-key", "empty-range", "distribution", "bad-value", "grid-of-floats", "not-logged", "test-metric",
        "direction"])
def test_a_bad_space_file_is_one_line_before_any_work(sentiment_files, tmp_path, space, message):
    args = _without_tracking_uri(_sweep_args(tmp_path, tiny_overrides(sentiment_files, tmp_path), space, trials=2))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == "Error: " + message.format(space=tmp_path / "space.yaml")
    assert not (tmp_path / "work").exists() and not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize("storage, message", [
    ("sqlite:///{tmp}/a-file/optuna.db", "Error: Optuna storage sqlite:///{tmp}/a-file/optuna.db is unreachable "
                                         "([Errno 17] File exists: '{tmp}/a-file'); every process of a study "
                                         "needs the same reachable --storage"),
    ("no-such-database", "Error: --storage no-such-database is not a database URL; use sqlite:///FILE or a "
                         "SQLAlchemy URL such as postgresql://USER:PASSWORD@HOST/DATABASE"),
])
def test_an_unusable_storage_is_one_line_before_any_work(sentiment_files, tmp_path, storage, message):
    (tmp_path / "a-file").write_text("not a folder")
    args = _without_tracking_uri(_sweep_args(tmp_path, tiny_overrides(sentiment_files, tmp_path), RANDOM_SPACE, 2))
    args[args.index("--storage") + 1] = storage.format(tmp=tmp_path)
    started = time.monotonic()
    result = CliRunner().invoke(main, args)
    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == message.format(tmp=tmp_path)
    assert not (tmp_path / "work").exists()


def test_a_study_refuses_a_process_with_another_config(tiny_config, tmp_path):
    storage = sweep.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    (tmp_path / "space.yaml").write_text(RANDOM_SPACE)
    space = sweep.load_space(tmp_path / "space.yaml", tiny_config)
    sweep.open_study("s", storage, space, tiny_config)
    sweep.open_study("s", storage, space, with_values(tiny_config, {"model.dropout": 0.1}))  # a swept key
    with pytest.raises(SweepError, match=r"^study s was started with train.epochs=2, not 3; give every process"):
        sweep.open_study("s", storage, space, with_values(tiny_config, {"train.epochs": 3}))


def test_a_trial_asked_for_after_the_study_filled_up_is_given_back(tiny_config, tmp_path, monkeypatch):
    storage = sweep.open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    (tmp_path / "space.yaml").write_text(RANDOM_SPACE)
    space = sweep.load_space(tmp_path / "space.yaml", tiny_config)
    study = sweep.open_study("s", storage, space, tiny_config)
    assert trials._ask(study, space, trials=1) is not None
    # Another process counted the trials before that one existed, and asks now.
    stale = [[]]
    real = study.get_trials
    monkeypatch.setattr(study, "get_trials", lambda **kwargs: stale.pop() if stale else real(**kwargs))
    assert trials._ask(study, space, trials=1) is None
    first, second = real()
    assert first.state == TrialState.RUNNING
    assert second.state == TrialState.FAIL and second.user_attrs[sweep.LOST] == sweep.SURPLUS


@pytest.mark.parametrize("preset, space", [("sst2_local.yaml", "sst2.yaml"), ("text_local.yaml", "lm.yaml")])
def test_the_shipped_space_files_fit_their_presets(preset, space):
    config = load_config(PRESETS_DIR / preset)
    loaded = sweep.load_space(PRESETS_DIR / "sweeps" / space, config)
    assert loaded.metric == {"sentiment": "val_accuracy", "lm": "val_bits_per_char"}[config.task]
    assert loaded.direction == {"sentiment": "maximize", "lm": "minimize"}[config.task]


def test_every_option_of_sweep_has_help():
    import click

    options = [p for p in main.commands["sweep"].params if isinstance(p, click.Option)]
    assert {"space_path", "trials", "study_name", "storage"} <= {o.name for o in options}
    assert [o.name for o in options if not (o.help or "").strip()] == []
