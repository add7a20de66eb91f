"""The `pipeline` command line: one command per stage, `run` for all of them, and tools that
use an exported model. Commands only parse options, build the config and call one function."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shlex
import signal
import sys
from pathlib import Path

import click

from pipeline.config import load_config
from pipeline.errors import Interrupted, PipelineError
from pipeline.registry import NAMES, STAGES


def common_options(command):
    """The options every pipeline command takes."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  help="YAML preset, e.g. configs/sst2_local.yaml. Without it, built-in defaults (the imdb preset).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override one config key, e.g. --set train.epochs=3. Repeatable; values are YAML scalars.")
    @click.option("--overrides", "override_string", default="", metavar="'KEY=VALUE ...'",
                  help="Several overrides in one string, space-separated (as MLproject passes them); "
                       "applied before --set.")
    @click.option("--workdir", type=click.Path(file_okay=False),
                  help="Where stage outputs go. Default: data/work/<config name>.")
    @click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                  help="MLflow tracking URI. Default: MLflow's own (sqlite:///mlflow.db here).")
    @click.option("--experiment", envvar="MLFLOW_EXPERIMENT_NAME", help="MLflow experiment name. Default: pipeline.")
    @functools.wraps(command)
    def wrapper(config_path, override_string, overrides, workdir, tracking_uri, experiment, **kwargs):
        with _errors_as_one_line():
            config = load_config(config_path or None, [*shlex.split(override_string), *overrides])
            from pipeline.training import distribute

            distribute.make_logical_cpus(config)  # only possible before TensorFlow runs an op
            workdir = Path(workdir or Path("data") / "work" / config.name)
            from pipeline import tracking

            tracking.configure(tracking_uri, experiment)
            from pipeline.training import signals

            with signals.installed():
                return command(config=config, workdir=workdir, **kwargs)

    return wrapper


@contextlib.contextmanager
def _errors_as_one_line():
    """Show the project's own errors as one `Error: ...` line and a non-zero exit; an interrupt
    exits 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells expect."""
    try:
        yield
    except PipelineError as error:
        raise click.ClickException(str(error)) from None
    except Interrupted as stop:
        click.echo(f"Interrupted ({signal.Signals(stop.signum).name}): the MLflow run is marked KILLED; "
                   "the same command resumes training from its last finished epoch.", err=True)
        sys.exit(stop.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show TensorFlow's own log lines too.")
def main(verbose: bool) -> None:
    """Train, evaluate and export LSTM text models (sentiment analysis, language modelling),
    with every run tracked in MLflow.

    Run all stages with `pipeline run --config configs/sst2_local.yaml`, or one at a time.
    """
    # Ctrl-C and SIGTERM unwind the stack like an exception, so runs are marked KILLED on the way.
    if not verbose:
        # In a cluster, TensorFlow's C++ side reports each worker that exits after training as
        # "crashed"; the pipeline reports a lost worker itself, in one line.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3" if "TF_CONFIG" in os.environ else "2")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)


@main.command()
@common_options
@click.option("--force", is_flag=False, flag_value="prepare", default=None, type=click.Choice(NAMES),
              help="Re-run stages whose output for this config exists: `--force` alone re-runs all, "
                   "`--force STAGE` that stage and every later one. Default: reuse finished stages.")
def run(config, workdir, force) -> None:
    """Run prepare, tokenize, train, evaluate and export in order, in one MLflow parent run.

    Stages whose output for this config already exists are reused (one line says so), and a
    training that was interrupted resumes from its last finished epoch.
    """
    from pipeline import runner, tracking

    results = runner.run_all(config, workdir, force=force)
    if "evaluate" not in results:  # workers 1.. of a cluster
        click.echo("training done; worker 0 evaluates, exports and logs to MLflow")
        return
    metrics = results["evaluate"].metrics
    click.echo(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    export_path = results["export"].path
    click.echo(f"exported {export_path}")
    program = _program()
    use = (f"{program} generate {export_path} --prompt {shlex.quote(config.train.sample_prompt.strip() or 'The')}"
           if config.task == "lm" else f'{program} predict {export_path} "a gripping, funny film" "flat and lifeless"')
    click.echo(f"\nNext:\n  {use}\n  {program} ui --tracking-uri {tracking.current_uri()}    # the MLflow UI")


def _program() -> str:
    """How to call this command again from the current folder: the venv's script if it is below it
    (`make run` calls `.venv/bin/pipeline` without activating the venv), else `pipeline`."""
    script = Path(sys.executable).parent / "pipeline"
    try:
        return str(script.relative_to(Path.cwd())) if script.is_file() else "pipeline"
    except ValueError:
        return "pipeline"


@main.command()
@common_options
@click.option("--space", "space_path", required=True, type=click.Path(dir_okay=False),
              help="YAML file naming the objective, sampler, pruner and the config keys to search, "
                   "e.g. configs/sweeps/sst2.yaml.")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(min=1),
              help="Trials the study should hold, counted over every process working on it (complete, pruned, "
                   "or failed by their values); this process stops when the study has them.")
@click.option("--study", "study_name",
              help="Optuna study name; processes with the same study and storage share the work. "
                   "Default: <config name>-<space file name>.")
@click.option("--storage",
              help="Optuna storage: sqlite:///FILE, or a SQLAlchemy URL such as postgresql://USER:PASSWORD@HOST/DB "
                   "that several hosts share. Default: sqlite:///optuna.db here.")
def sweep(config, workdir, space_path, trials, study_name, storage) -> None:
    """Search config values with Optuna, each trial a `pipeline run`.

    Trials reuse finished stages, hopeless ones are pruned between epochs, and in MLflow every trial
    nests under one sweep run per process. Start the same command in more processes (on more hosts,
    with a shared --storage and --tracking-uri) to share the work. Ends with the trials, best first,
    and the `pipeline run` line of the best one.
    """
    from pipeline import tracking
    from pipeline.tools import sweep as sweep_lib

    space = sweep_lib.load_space(space_path, config)
    study = study_name or f"{config.name}-{Path(space_path).stem}"
    result = sweep_lib.run(config, workdir, space, trials, study, storage or sweep_lib.DEFAULT_STORAGE)
    click.echo(tracking.format_table(result.rows))
    if result.best_trial is None:
        click.echo(f"\nNo trial of study {study} has completed.")
        return
    best = result.best_trial
    click.echo(f"\nBest: trial {best.number}, {space.metric}={best.value:.4f}; its config: {result.best_config}")
    click.echo(f"  {_program()} run --config {result.best_config} --workdir {workdir}")
    click.echo(f"  {_program()} ui --tracking-uri {tracking.current_uri()}    # the MLflow UI")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--workers", required=True, type=click.IntRange(min=2), help="Worker processes to start.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def launch(workers, command) -> None:
    """Train on WORKERS processes of this machine as one multi-worker cluster, CPU only.

    COMMAND is a `run` or `train` command line, after `--`, e.g.
    `pipeline launch --workers 2 -- run --config configs/sst2_local.yaml`. Each worker gets a
    loopback port and its TF_CONFIG, and trains with train.distribute=multi_worker; worker 0
    writes the outputs, logs to MLflow and prints here. Exits with worker 0's code (or a failed
    worker's). On several hosts, set TF_CONFIG on each and run the command itself (see docs/distributed.md).
    """
    from pipeline.tools import launch as launch_lib

    if command[0] not in launch_lib.COMMANDS:
        raise click.UsageError(f"launch runs a training command ({' or '.join(launch_lib.COMMANDS)}), "
                               f"not {command[0]!r}: pipeline launch --workers {workers} -- run --config ...")
    verbose = click.get_current_context().find_root().params.get("verbose", False)
    sys.exit(launch_lib.run(list(command), workers, verbose=verbose))


def _stage_command(stage: str, help_text: str):
    @common_options
    @click.option("--force", is_flag=True, help="Run the stage even if its output for this config exists.")
    def command(config, workdir, force) -> None:
        from pipeline import runner

        runner.run_stage(stage, config, workdir, force=force)

    command.__doc__ = help_text
    main.command(name=stage, help=help_text)(command)


for _stage in STAGES:
    _stage_command(_stage.name, _stage.help)


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1)
@click.option("--input", "input_file", type=click.File("r", encoding="utf-8"),
              help="Read texts from this file, one per line ('-' for standard input).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per text instead of a table.")
def predict(model_dir, texts, input_file, as_json) -> None:
    """Classify TEXTS with the exported sentiment model in MODEL_DIR.

    MODEL_DIR is a version folder (models/<run>/<version>) or a run folder, whose newest
    version is used.
    """
    texts = list(texts) + ([line.rstrip("\n") for line in input_file] if input_file else [])
    if not texts:
        raise click.UsageError("give TEXT arguments or --input FILE")
    with _errors_as_one_line():
        from pipeline.tools import predict as predict_lib

        results = predict_lib.classify(model_dir, texts)
    for row in results:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            click.echo(f"{row['label']}\t{row['probabilities'][row['label']]:.3f}\t{row['text']}")


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--prompt", default="", show_default=True, help="Text to continue; empty starts from nothing.")
@click.option("--max-tokens", default=200, show_default=True, type=int, help="Tokens to generate.")
@click.option("--temperature", default=0.8, show_default=True, type=float,
              help="Sampling temperature; 0 is greedy decoding.")
@click.option("--top-k", default=0, show_default=True, type=int,
              help="Sample from the K most likely tokens only; 0 means all.")
@click.option("--seed", default=0, show_default=True, type=int, help="The same seed gives the same text.")
@click.option("--num-samples", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many continuations, each with its own seed (seed, seed+1, ...).")
def generate(model_dir, prompt, max_tokens, temperature, top_k, seed, num_samples) -> None:
    """Continue --prompt with the exported language model in MODEL_DIR."""
    with _errors_as_one_line():
        from pipeline.tools import predict as predict_lib

        texts, notes = predict_lib.generate(model_dir, [prompt], max_tokens=max_tokens, temperature=temperature,
                                            top_k=top_k, seed=seed, samples=num_samples)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    for i, text in enumerate(texts):
        if num_samples > 1:
            click.echo(f"--- sample {i + 1} (seed {seed + i})")
        click.echo(text)


@main.command(name="inspect")
@common_options
@click.option("--text", "texts", multiple=True, metavar="TEXT", help="A text to draw a page for; repeatable.")
@click.option("--input", "input_file", type=click.File("r", encoding="utf-8"),
              help="Read texts from this file, one per line ('-' for standard input).")
@click.option("--compare-cells", is_flag=True,
              help="Also train (or reuse) this config with model.cell lstm, gru and simple_rnn through the normal "
                   "stages, and plot their gradient flow on one figure with their test metrics.")
def inspect_command(config, workdir, texts, input_file, compare_cells) -> None:
    """Look inside the trained model of this config: per text an HTML page (tokens coloured by any
    unit's gates or cell state, the prediction, what each token contributed) and gate heat maps;
    gate saturation and the units that track the label or the position over the validation split;
    and how the gradient fades with distance. Written to <workdir>/inspect/ and logged to the
    config's MLflow run under inspect/.
    """
    texts = [*texts, *(line.rstrip("\n") for line in input_file)] if input_file else list(texts)
    if not texts and not compare_cells:
        raise click.UsageError("give --text TEXT (repeatable) or --input FILE")
    from pipeline.tools.inspection import inspector as inspect_lib

    result = inspect_lib.run(config, workdir, texts, compare_cells=compare_cells)
    for path in result.files:
        click.echo(path)
    if result.run_id:
        click.echo(f"logged to MLflow run {result.run_id} under inspect/")


@main.command(name="config")
@click.option("--markdown", is_flag=True, help="Print the reference as the Markdown page of the docs (docs/config.md).")
def config_command(markdown) -> None:
    """List every config key with its type, default and help, as presets and --set use them."""
    from pipeline.config import reference

    click.echo(reference.markdown() if markdown else reference.text(), nl=not markdown)


@main.command()
@click.option("--experiment", envvar="MLFLOW_EXPERIMENT_NAME", help="MLflow experiment name. Default: pipeline.")
@click.option("--metric", default="test_accuracy", show_default=True,
              help="Sort by this metric: best first (lowest for loss, perplexity and bits per character).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI. Default: MLflow's own (sqlite:///mlflow.db here).")
def compare(experiment, metric, tracking_uri) -> None:
    """Print the experiment's runs side by side: key params and test metrics, best first."""
    with _errors_as_one_line():
        from pipeline import tracking

        tracking.use(tracking_uri)
        click.echo(tracking.format_table(tracking.compare_runs(experiment, metric)))


@main.command()
@click.option("--port", default=5000, show_default=True, type=int, help="Port on 127.0.0.1.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI. Default: MLflow's own (sqlite:///mlflow.db here), as `pipeline run` uses.")
def ui(port, tracking_uri) -> None:
    """Start the MLflow UI on 127.0.0.1 for the pipeline's tracking store, and print its URL."""
    import subprocess

    import mlflow

    from pipeline import tracking

    tracking.use(tracking_uri)
    click.echo(f"MLflow UI for {mlflow.get_tracking_uri()}: http://127.0.0.1:{port}  (Ctrl-C stops it)")
    try:
        subprocess.run(tracking.ui_command(port), check=False)
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("model")
@click.option("--port", default=5001, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 opens the server to other machines.")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
              help="MLflow tracking URI holding a models:/ MODEL. Default: MLflow's own (sqlite:///mlflow.db here).")
def serve(model, port, host, tracking_uri) -> None:
    """Serve MODEL over HTTP (POST /invocations) with MLflow's scoring server, until Ctrl-C.

    MODEL is an export folder (models/<run>/<version>, or a run folder, whose newest version is
    used) or a registered model, models:/NAME/VERSION. A sentiment model takes a `text` column
    and answers label and probabilities; a language model takes a `prompt` column and the params
    max_tokens, temperature, top_k and seed.
    """
    with _errors_as_one_line():
        from pipeline.tools import serving

        serving.run(model, host, port, tracking_uri)
