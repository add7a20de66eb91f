"""`pipeline inspect`: look inside a trained model: gates, cell state, what drove a prediction, and
how far back its gradient reaches.

Reads the config's finished train, tokenize and prepare outputs (as the stage commands find them).
Writes `<workdir>/inspect/<train key>/` and logs it to the config's MLflow run under `inspect/`:
  - per text, `text_<n>.html` (self-contained: the tokens coloured by any unit's gates or states,
    the prediction, and per token its contribution by occlusion (sentiment) or its surprisal in
    bits per character (language model)), `text_<n>_tokens.png` (that last row as a picture) and
    `text_<n>_<layer>_<direction>.png` heat maps;
  - over the validation split, `saturation.json|png` (per layer and gate, the share of steps below
    0.1 and above 0.9) and `correlated_units.json|png` (the units whose cell state follows the label
    or the position), also logged as metrics;
  - `gradient_flow.json|png`, the gradient's norm against distance (see `pipeline.tools.inspection.gradient_flow`);
  - with `compare_cells`, `compare_cells.json|png`: the same curve for an LSTM, a GRU and a simple
    RNN trained on the same data through the normal, cached stages.
Gates and cell states need an LSTM (`pipeline.tools.inspection.replay`); for `model.cell` gru or simple_rnn only the
predictions and the gradient flow are written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline import config as config_lib
from pipeline import metrics as metric_table
from pipeline import models, tracking
from pipeline.config import Config
from pipeline.data import inputs, subwords
from pipeline.data.splits import load_split
from pipeline.errors import ConfigError, DataError
from pipeline.store import cache
from pipeline.store.workdir import atomic_output, producer, require_stage
from pipeline.tools.inspection import gradient_flow, pages, replay

log = logging.getLogger(__name__)
PAGE_UNITS = 64  # units per layer a page carries (the most active in its text)
HEATMAP_UNITS = 24
VALIDATION_ROWS = 256  # sentiment examples (or, for a language model, windows / 8) the statistics read
GRADIENT_ROWS = 64
TOP_UNITS = 10


@dataclass(frozen=True)
class InspectResult:
    """What inspect wrote and where it logged it."""

    output_dir: Path
    run_id: str | None
    metrics: dict[str, float]
    files: list[Path]


def run(config: Config, workdir: str | Path, texts: list[str], *, compare_cells: bool = False) -> InspectResult:
    """Inspect the trained model of `config` on `texts` and on its validation split.

    Args:
        texts: texts to draw one page each for (may be empty with `compare_cells`).
        compare_cells: first train (or reuse) the config with every `model.cell`, and compare their
            gradient flow.
    """
    for n, text in enumerate(texts, start=1):
        if not text.strip():
            raise DataError(f"text {n} is empty; give some words to inspect")
    comparison = {}
    if compare_cells:
        check_memory(config)
        comparison = _train_every_cell(config, workdir)
    trained = require_stage(config, workdir, "train", needed_by="pipeline inspect")
    tokenized = require_stage(config, workdir, "tokenize", needed_by="pipeline inspect")
    sp = subwords.load(tokenized / "tokenizer.model")
    encoded = _encode(config, sp, texts)
    model = keras.saving.load_model(trained / "model.keras", safe_mode=True)
    labels = _labels(config, workdir)
    is_lstm = bool(models.lstm_layers(model))
    metrics: dict[str, float] = {}
    steps: dict[str, list[float]] = {}
    output_dir = Path(workdir) / "inspect" / cache.stage_keys(config)["train"]
    with atomic_output(output_dir) as out:
        for n, (text, ids) in enumerate(zip(texts, encoded, strict=True), start=1):
            _inspect_text(config, model, sp, labels, text, ids, out, n, is_lstm)
        if is_lstm:
            metrics.update(_validation_statistics(config, model, tokenized, out))
        rows, targets = gradient_rows(config, tokenized)
        curve = gradient_flow.gradient_norms(model, rows, targets, from_logits=config.task == "lm")
        steps["inspect.gradient_norm"] = curve.tolist()
        _write_curves(out, "gradient_flow", {config.model.cell: curve}, {}, config, rows.shape)
        if comparison:
            curves = {cell: gradient_flow.gradient_norms(keras.saving.load_model(path, safe_mode=True), rows, targets,
                                                         from_logits=config.task == "lm")
                      for cell, (path, _) in comparison.items()}
            _write_curves(out, "compare_cells", curves, {c: text for c, (_, text) in comparison.items()}, config,
                          rows.shape)
            steps.update({f"inspect.gradient_norm.{cell}": curve.tolist() for cell, curve in curves.items()})
        names = sorted(p.name for p in out.iterdir())
    run_id = _log(config, workdir, trained, output_dir, metrics, steps)
    files = [output_dir / name for name in names]
    log.info("inspect: wrote %d files to %s%s", len(files), output_dir,
             f"; logged to MLflow run {run_id} under inspect/" if run_id else "")
    return InspectResult(output_dir, run_id, metrics, files)


def _encode(config: Config, sp, texts: list[str]) -> list[np.ndarray]:
    """Ids of each text as training saw them; a text that is only unknown pieces is an error."""
    max_length = config.train.max_length if config.task == "sentiment" else None
    encoded = [np.array(ids, dtype="int32") for ids in subwords.encode(sp, texts, max_length)]
    for n, (text, ids) in enumerate(zip(texts, encoded, strict=True), start=1):
        # A lone word boundary ("▁") before unknown characters is no more known than they are.
        if all(i == subwords.UNK_ID or sp.id_to_piece(int(i)) == "▁" for i in ids[1:]):
            raise DataError(f"text {n} ({text[:40]!r}) is only pieces this tokenizer does not know; "
                            "give text in the language and script of the training data")
    return encoded


def _labels(config: Config, workdir: str | Path) -> list[str]:
    if config.task == "lm":
        return []
    prepared = require_stage(config, workdir, "prepare", needed_by="pipeline inspect")
    return json.loads((prepared / "labels.json").read_text(encoding="utf-8"))


def _display(sp, text: str, ids: np.ndarray) -> list[str]:
    """The tokens as a reader sees them: BOS as <s>, word boundaries as spaces, line breaks as ↵, and an
    unknown piece as the text it stands for (its id alone would say only <unk>)."""
    pieces = sp.encode(text, out_type=str)  # an unknown piece comes back as its own characters
    return ["<s>", *(p.replace("▁", " ").replace("\n", "↵") for p in pieces)][: len(ids)]


def _inspect_text(config: Config, model: keras.Model, sp, labels: list[str], text: str, ids: np.ndarray,
                  out: Path, n: int, is_lstm: bool) -> None:
    """One text's HTML page and (for an LSTM) its heat maps."""
    tokens = _display(sp, text, ids)
    if config.task == "lm":
        summary, extra, note = _surprisal(model, sp, ids, text)
        extra_name = "surprisal (bits per character)"
    else:
        summary, extra, note = _occlusion(model, ids, labels)
        extra_name = "contribution to the predicted class"
    views, units = {}, {}
    if is_lstm:
        prefix = "member_0_" if config.model.ensemble > 1 else ""
        for trace in replay.replay_model(model, ids[None], prefix=prefix):
            chosen = _most_active(trace.cell[0], PAGE_UNITS)
            units[trace.name] = chosen.tolist()
            views[trace.name] = {q: np.round(getattr(trace, q)[0][:, chosen], 4).tolist()
                                 for q in ("cell", "hidden", *replay.GATES)}
            top = chosen[:HEATMAP_UNITS]
            values = {q: getattr(trace, q)[0][:, top] for q in pages.HEATMAP_QUANTITIES}
            pages.gate_heatmaps(out / f"text_{n}_{trace.layer}_{trace.direction}.png", name=trace.name,
                                         tokens=tokens, units=top.tolist(), values=values)
    else:
        note += f" Gates and cell states are drawn for LSTMs only; this model's cell is {config.model.cell}."
    title = f"{config_lib.run_name(config)}: text {n}"
    pages.token_page(out / f"text_{n}.html", title=title, tokens=tokens, views=views, units=units,
                              summary=summary, extra_name=extra_name, extra=extra, extra_note=note)
    pages.token_strip(out / f"text_{n}_tokens.png", tokens=tokens, values=extra, title=f"{title}, {summary}",
                               note=extra_name)


def _most_active(cell: np.ndarray, count: int) -> np.ndarray:
    """Units ordered by how much their cell state moves over the text, most first."""
    return np.argsort(-np.nan_to_num(cell).std(axis=0), kind="stable")[:count]


def _occlusion(model: keras.Model, ids: np.ndarray, labels: list[str]):
    """The prediction, and per token the drop in the predicted class's probability when it is removed."""
    variants = [ids] + [np.delete(ids, i) for i in range(1, len(ids))]
    batch = keras.utils.pad_sequences(variants, padding="post", value=0, dtype="int32")
    probs = np.asarray(model(batch, training=False), dtype=np.float64)
    predicted = int(probs[0].argmax())
    contribution = [None] + (probs[0, predicted] - probs[1:, predicted]).tolist()
    shown = ", ".join(f"{label} {p:.3f}" for label, p in zip(labels, probs[0], strict=True))
    note = ("Occlusion: the predicted class's probability with the whole text minus its probability with that "
            "token removed (red: the token pushed towards the prediction, blue: against it).")
    return f"prediction: {labels[predicted]} ({shown})", contribution, note


def _surprisal(model: keras.Model, sp, ids: np.ndarray, text: str):
    """Bits the model needed for each token, spread over the token's characters."""
    logits = np.asarray(model(ids[None], training=False), dtype=np.float64)[0]
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    bits = -log_probs[np.arange(len(ids) - 1), ids[1:]] / np.log(2)
    # A byte piece of a character unseen in training decodes to nothing alone: count it as one.
    characters = np.array([max(len(sp.decode([int(i)])), 1) for i in ids[1:]])
    total = float(bits.sum())
    summary = f"{total:.1f} bits for {len(text)} characters: {total / max(len(text), 1):.3f} bits per character"
    note = ("Surprisal: -log2 p(token | the tokens before it), divided by the token's characters (a character "
            "of a token the model found hard is red).")
    return summary, [None, *(bits / characters).tolist()], note


def validation_batch(config: Config, tokenized: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Right-padded ids of the first validation examples (sentiment, with their labels) or windows
    of `train.sequence_length` tokens (language model, no labels): what the statistics read."""
    split = load_split(tokenized, "validation")
    if config.task == "lm":
        return inputs.lm_windows(split["ids"], config.train.sequence_length)[: VALIDATION_ROWS // 8, :-1], None
    lengths = split["lengths"][:VALIDATION_ROWS]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = [split["ids"][s:s + n] for s, n in zip(starts, lengths, strict=True)]
    return keras.utils.pad_sequences(rows, padding="post", value=0, dtype="int32"), split["labels"][:VALIDATION_ROWS]


def saturation(traces: list[replay.GateTrace]) -> dict[str, dict[str, np.ndarray]]:
    """Per trace and gate, each unit's share of real steps with the gate below 0.1 and above 0.9."""
    stats = {}
    for trace in traces:
        stats[trace.name] = {}
        for gate in ("input_gate", "forget_gate", "output_gate"):
            values = getattr(trace, gate)[trace.mask]  # [steps, units]
            stats[trace.name][f"{gate}.below_0.1"] = (values < 0.1).mean(axis=0)
            stats[trace.name][f"{gate}.above_0.9"] = (values > 0.9).mean(axis=0)
    return stats


def correlated_units(traces: list[replay.GateTrace], labels: np.ndarray | None) -> dict[str, list[dict]]:
    """The units whose cell state correlates most (Pearson r, by magnitude) with the label (the
    state after the direction has read the whole text) and with the position in the text (every
    real step)."""
    found: dict[str, list[dict]] = {"position": []}
    if labels is not None:
        found["label"] = []
    for trace in traces:
        positions = np.broadcast_to(np.arange(trace.mask.shape[1]), trace.mask.shape)[trace.mask]
        for unit, r in enumerate(_pearson(trace.cell[trace.mask], positions)):
            found["position"].append({"trace": trace.name, "unit": unit, "r": r})
        if labels is not None:
            for unit, r in enumerate(_pearson(trace.final("cell"), labels)):
                found["label"].append({"trace": trace.name, "unit": unit, "r": r})
    return {kind: sorted(rows, key=lambda row: -abs(row["r"]))[:TOP_UNITS] for kind, rows in found.items()}


def _pearson(values: np.ndarray, target: np.ndarray) -> list[float]:
    """Pearson r of each column of `values` with `target` (0 where either is constant)."""
    x = values - values.mean(axis=0)
    y = np.asarray(target, dtype=np.float64) - np.mean(target)
    denominator = np.sqrt((x ** 2).sum(axis=0) * (y ** 2).sum())
    return np.nan_to_num(x.T @ y / np.where(denominator > 0, denominator, np.inf)).tolist()


def _validation_statistics(config: Config, model: keras.Model, tokenized: Path, out: Path) -> dict[str, float]:
    """Saturation and correlated units over the validation split: files, and the metrics to log."""
    ids, labels = validation_batch(config, tokenized)
    traces = replay.replay_model(model, ids, prefix="member_0_" if config.model.ensemble > 1 else "")
    stats = saturation(traces)
    metrics = {f"inspect.{trace.replace('/', '.')}.{key}": float(values.mean())
               for trace, by_gate in stats.items() for key, values in by_gate.items()}
    (out / "saturation.json").write_text(json.dumps(
        {trace: {key: values.tolist() for key, values in by_gate.items()} for trace, by_gate in stats.items()}),
        encoding="utf-8")
    pages.saturation_plot(out / "saturation.png", stats)
    found = correlated_units(traces, labels)
    best = found["position"][0]
    trace = next(t for t in traces if t.name == best["trace"])
    series = [trace.cell[i][trace.mask[i], best["unit"]].tolist() for i in range(min(5, len(ids)))]
    (out / "correlated_units.json").write_text(json.dumps(found, indent=1), encoding="utf-8")
    pages.correlation_plot(out / "correlated_units.png", found, {**best, "series": series})
    metrics.update({f"inspect.{kind}_correlation.max_abs_r": abs(rows[0]["r"]) for kind, rows in found.items() if rows})
    return metrics


def gradient_rows(config: Config, tokenized: Path) -> tuple[np.ndarray, np.ndarray]:
    """Long validation texts of one length (no padding) and the targets of their last position."""
    split = load_split(tokenized, "validation")
    if config.task == "lm":
        windows = inputs.lm_windows(split["ids"], config.train.sequence_length)[:GRADIENT_ROWS // 2]
        return windows[:, :-1], windows[:, -1]
    index, rows = gradient_flow.long_rows(split["ids"], split["lengths"], rows=GRADIENT_ROWS)
    return rows, split["labels"][index]


def _write_curves(out: Path, name: str, curves: dict[str, np.ndarray], notes: dict[str, str], config: Config,
                  shape: tuple[int, ...]) -> None:
    labels = {cell: f"{cell} {notes[cell]}" if cell in notes else cell for cell in curves}
    title = (f"{config.name}: gradient of the loss at the last position, {shape[0]} validation "
             f"{'windows' if config.task == 'lm' else 'texts'} of {shape[1]} tokens")
    pages.gradient_flow_plot(out / f"{name}.png", curves, labels, title)
    body = {cell: {"gradient_norm_by_distance": curve.tolist(), "note": notes.get(cell, "")}
            for cell, curve in curves.items()}
    (out / f"{name}.json").write_text(json.dumps({"rows": shape[0], "tokens": shape[1], "curves": body}, indent=1),
                                      encoding="utf-8")


def _train_every_cell(config: Config, workdir: str | Path) -> dict[str, tuple[Path, str]]:
    """Train (or reuse) the config with each cell through the normal stages: model path and metrics."""
    from pipeline import runner

    trained = {}
    for cell in models.CELLS:
        variant = config_lib.with_values(config, {"model.cell": cell})
        log.info("== compare cells: %s", config_lib.run_name(variant))
        results = runner.run_all(variant, workdir)
        metrics = results["evaluate"].metrics
        trained[cell] = (results["train"].model_path, _headline(metrics))
    return trained


def _headline(metrics: dict[str, float]) -> str:
    """The figure a legend shows: the test accuracy or bits per character, or with no test split
    the validation one that evaluate scored instead (named so)."""
    for key in [metric_table.headline(task, split) for split in ("test", "val") for task in metric_table.HEADLINE]:
        if key in metrics:
            return f"{key}={metrics[key]:.3f}"
    return ""


def training_bytes(config: Config, cell: str, vocab_size: int) -> int:
    """A rough upper estimate of the memory training `config` with `cell` takes: weights, gradients and
    Adam's two moments (4 float32 copies of the parameters), and the activations kept for
    backpropagation through time (every gate of every step of a batch)."""
    m = config.model
    gates = {"lstm": 4, "gru": 3, "simple_rnn": 1}[cell]
    directions = 2 if m.bidirectional else 1
    width = m.units * directions
    recurrent = sum(gates * ((m.embedding_dim if i == 0 else width) + m.units + 2) * m.units * directions
                    for i in range(m.layers))
    parameters = (vocab_size * m.embedding_dim + recurrent + width * vocab_size) * m.ensemble
    steps = config.train.sequence_length if config.task == "lm" else config.train.max_length
    activations = config.train.batch_size * steps * m.layers * width * (gates + 2) * m.ensemble
    return 4 * (4 * parameters + 3 * activations)


def check_memory(config: Config) -> None:
    """Refuse `--compare-cells` in one line when one of the cells would not fit in memory."""
    available = _available_bytes()
    vocab = config.tokenizer.vocab_size
    for cell in models.CELLS:
        need = training_bytes(config, cell, vocab)
        if available and need > available:
            raise ConfigError(
                f"--compare-cells: training with model.cell={cell} would need about {need / 2**30:.1f} GiB, more "
                f"than the {available / 2**30:.1f} GiB available; lower model.units, model.layers or train.batch_size")


def _available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None (no check)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _log(config: Config, workdir: str | Path, trained: Path, folder: Path, metrics: dict[str, float],
         steps: dict[str, list[float]]) -> str | None:
    """Add the outputs to the config's MLflow run: the `pipeline run` parent that trained the model, or
    its train run; without either in this tracking store, a new `inspect` run."""
    made_by = producer(trained)
    for run_id in (made_by.get("parent_run_id"), made_by.get("run_id")):
        if run_id and tracking.run_exists(run_id):
            tracking.add_to_run(run_id, folder, "inspect", metrics, steps)
            return run_id
    from pipeline import runner

    with tracking.start_run("inspect", tags={**runner.run_tags(config, workdir), "stage": "inspect"}) as run:
        runner.log_config(config)
        tracking.add_to_run(run.info.run_id, folder, "inspect", metrics, steps)
        return run.info.run_id
