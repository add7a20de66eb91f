"""What `pipeline inspect` draws: a self-contained HTML page per text, and PNG figures.

The HTML page needs no network and no server: its data sit in the page as JSON and a few lines of
JavaScript recolour the tokens when another layer, quantity or unit is picked. The tokens are also
written out in the page itself, coloured by the first view, so it reads without JavaScript too.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np

HEATMAP_QUANTITIES = ("forget_gate", "input_gate", "output_gate", "cell")


def token_page(path: Path, *, title: str, tokens: list[str], views: dict[str, dict[str, list[list[float]]]],
               units: dict[str, list[int]], summary: str, extra_name: str, extra: list[float | None],
               extra_note: str) -> Path:
    """Write one text's page.

    Args:
        tokens: the pieces as displayed, BOS first.
        views: `{"bidirectional_0/forward": {"cell": [[value per unit] per token], ...}, ...}`.
        units: the unit numbers the columns of each trace's values stand for.
        summary: the prediction, one line.
        extra_name: what the per-token second row shows ("contribution", "surprisal (bits)").
        extra: its value per token (None where it has none, as BOS).
        extra_note: how that row was computed.
    """
    first_trace = next(iter(views))
    first = np.array(views[first_trace]["cell"])[:, 0] if views else np.zeros(len(tokens))
    spans = "".join(_span(i, token, _colour(value, "cell", np.abs(first).max() or 1.0))
                    for i, (token, value) in enumerate(zip(tokens, first, strict=True)))
    limit = max((abs(v) for v in extra if v is not None), default=1.0) or 1.0
    extra_spans = "".join(_span(i, token, _colour(v or 0.0, "signed", limit), title=_number(v))
                          for i, (token, v) in enumerate(zip(tokens, extra, strict=True)))
    data = {"tokens": tokens, "views": views, "units": units}
    page = PAGE.format(title=html.escape(title), summary=html.escape(summary), tokens=spans,
                       extra_name=html.escape(extra_name), extra=extra_spans, extra_note=html.escape(extra_note),
                       data=json.dumps(data).replace("</", "<\\/"))
    path.write_text(page, encoding="utf-8")
    return path


def _span(index: int, token: str, colour: str, title: str = "") -> str:
    hover = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="t" data-i="{index}" style="background:{colour}"{hover}>{html.escape(token)}</span>'


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:+.3f}"


def _colour(value: float, kind: str, limit: float) -> str:
    """Gates (0..1) in green; signed quantities red (positive) and blue (negative)."""
    if kind.endswith("gate"):
        return f"rgba(40,160,60,{min(max(value, 0.0), 1.0):.3f})"
    alpha = min(abs(value) / limit, 1.0)
    return f"rgba(214,39,40,{alpha:.3f})" if value >= 0 else f"rgba(31,119,180,{alpha:.3f})"


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; line-height: 2.2; }}
.t {{ padding: 0.15em 0.1em; margin: 0 1px; border-radius: 3px; white-space: pre; font-family: monospace; }}
.note {{ color: #555; font-size: 0.9em; line-height: 1.4; }}
select, input {{ font-size: 1em; }}
</style></head><body>
<h1>{title}</h1>
<p><b>{summary}</b></p>
<p>Layer <select id="trace"></select> quantity <select id="quantity"></select>
unit <select id="unit"></select> <span id="range" class="note"></span></p>
<div id="tokens">{tokens}</div>
<p class="note">Gates from 0 (white) to 1 (green); cell state, hidden state and candidate red above 0 and
blue below, scaled to the largest magnitude of that unit in this text. A masked position keeps its
state; a bidirectional layer's backward state at a token summarises the text from there to the end.</p>
<h2>{extra_name}</h2>
<div>{extra}</div>
<p class="note">{extra_note} Hover a token for its value.</p>
<script type="application/json" id="data">{data}</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent);
const trace = document.getElementById("trace"), quantity = document.getElementById("quantity"),
      unit = document.getElementById("unit");
function fill(select, values, labels) {{
  select.innerHTML = "";
  values.forEach((v, i) => {{ const o = document.createElement("option"); o.value = v;
    o.textContent = labels ? labels[i] : v; select.appendChild(o); }});
}}
function colour(v, q, limit) {{
  if (v === null) return "transparent";
  if (q.endsWith("gate")) return `rgba(40,160,60,${{Math.min(Math.max(v, 0), 1)}})`;
  const a = Math.min(Math.abs(v) / limit, 1);
  return v >= 0 ? `rgba(214,39,40,${{a}})` : `rgba(31,119,180,${{a}})`;
}}
function draw() {{
  const column = D.views[trace.value][quantity.value].map(row => row[Number(unit.value)]);
  const limit = Math.max(...column.filter(v => v !== null).map(Math.abs)) || 1;
  document.querySelectorAll("#tokens .t").forEach(span => {{
    const v = column[Number(span.dataset.i)];
    span.style.background = colour(v, quantity.value, limit);
    span.title = v === null ? "masked" : v.toFixed(3);
  }});
  document.getElementById("range").textContent = `largest magnitude ${{limit.toFixed(3)}}`;
}}
trace.onchange = () => {{ fill(quantity, Object.keys(D.views[trace.value]));
  fill(unit, D.units[trace.value].map((u, i) => i), D.units[trace.value].map(u => "unit " + u)); draw(); }};
quantity.onchange = draw; unit.onchange = draw;
fill(trace, Object.keys(D.views)); trace.onchange();
</script>
</body></html>
"""


def gate_heatmaps(path: Path, *, name: str, tokens: list[str], values: dict[str, np.ndarray],
                  units: list[int]) -> Path:
    """Tokens x units heat maps of the forget, input and output gates and the cell state of one layer.

    Args:
        values: quantity -> `[time, units]` for the units in `units`.
    """
    fig, axes = plt.subplots(len(HEATMAP_QUANTITIES), 1, figsize=(max(6.0, 0.22 * len(tokens) + 2), 11), sharex=True)
    # tight_layout and colour bars cost more than the rest of inspect together: fixed margins, and the
    # scale in each panel's title instead.
    fig.subplots_adjust(left=0.1, right=0.98, top=0.95, bottom=0.16, hspace=0.35)
    for ax, quantity in zip(axes, HEATMAP_QUANTITIES, strict=True):
        grid = np.nan_to_num(values[quantity].T)
        if quantity == "cell":
            limit = float(np.abs(grid).max()) or 1.0
            ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            scale = f"blue -{limit:.2f} .. white 0 .. red +{limit:.2f}"
        else:
            ax.imshow(grid, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest")
            scale = "white 0 .. green 1"
        ax.set_title(f"{quantity.replace('_', ' ')} ({scale})", fontsize=9)
        ax.set_ylabel("unit", fontsize=8)
        step = max(1, len(units) // 6)
        ax.set_yticks(range(0, len(units), step), [str(u) for u in units[::step]], fontsize=7)
    step = max(1, len(tokens) // 60)
    axes[-1].set_xticks(range(0, len(tokens), step), tokens[::step], rotation=90, fontsize=8)
    fig.suptitle(f"{name}: the {len(units)} units whose cell state varies most in this text", fontsize=10)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def saturation_plot(path: Path, saturation: dict[str, dict[str, np.ndarray]]) -> Path:
    """Karpathy, Johnson & Fei-Fei (2015), figure 3: per unit, the share of steps its gate spends
    below 0.1 (x) and above 0.9 (y), one panel per gate, one colour per layer and direction."""
    gates = ("input_gate", "forget_gate", "output_gate")
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4), sharex=True, sharey=True)
    for ax, gate in zip(axes, gates, strict=True):
        for trace, stats in saturation.items():
            ax.scatter(stats[f"{gate}.below_0.1"], stats[f"{gate}.above_0.9"], s=10, alpha=0.6, label=trace)
        ax.plot([0, 1], [1, 0], color="grey", lw=0.5)
        ax.set_title(gate.replace("_", " "))
        ax.set_xlabel("fraction of steps < 0.1 (left-saturated)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("fraction of steps > 0.9 (right-saturated)")
    axes[-1].legend(fontsize=8, loc="upper right")
    fig.suptitle("gate saturation per unit over the validation split")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def correlation_plot(path: Path, correlations: dict[str, list[dict]], example: dict | None) -> Path:
    """The units most correlated with the label and with position (bars), and the cell state of the
    most position-correlated unit along a few validation texts."""
    kinds = [k for k in ("label", "position") if correlations.get(k)]
    panels = len(kinds) + (example is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        rows = correlations[kind]
        ax.barh(range(len(rows)), [r["r"] for r in rows], color=["#d62728" if r["r"] > 0 else "#1f77b4" for r in rows])
        ax.set_yticks(range(len(rows)), [f"{r['trace']} unit {r['unit']}" for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(-1, 1)
        ax.set_xlabel(f"Pearson r of the cell state with the {kind}")
        ax.set_title(f"units most correlated with {kind}")
    if example is not None:
        ax = axes[0][-1]
        for row in example["series"]:
            ax.plot(row, lw=1)
        ax.set_xlabel("position in the text")
        ax.set_ylabel("cell state")
        ax.set_title(f"{example['trace']} unit {example['unit']} along validation texts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def gradient_flow_plot(path: Path, curves: dict[str, np.ndarray], labels: dict[str, str], title: str) -> Path:
    """Gradient norm against distance from the end, one curve per model, on a log scale."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for name, curve in curves.items():
        ax.semilogy(np.arange(len(curve)), np.maximum(curve, 1e-30), label=labels.get(name, name))
    ax.set_xlabel("distance from the last position (tokens)")
    ax.set_ylabel("mean ||dL / d embedding||")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def token_strip(path: Path, *, tokens: list[str], values: list[float | None], title: str, note: str) -> Path:
    """The text's tokens on coloured boxes (red above 0, blue below), wrapped like prose: a still of the
    second row of the HTML page, for places that show pictures only (the MLflow UI's preview, a README)."""
    limit = max((abs(v) for v in values if v is not None), default=1.0) or 1.0
    width, x, line, placed = 100, 0, 0, []  # characters per line: a 9-inch figure of 10-point monospace
    for token, value in zip(tokens, values, strict=True):
        shown = token.replace(" ", "\u00b7") if token.strip() == "" else token
        if x + len(shown) > width and x > 0:
            x, line = 0, line + 1
        placed.append((x, line, shown, value))
        x += len(shown) + 1
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.42 * (line + 1)))
    ax.set_xlim(0, width + 2)
    ax.set_ylim(line + 0.8, -0.8)
    ax.axis("off")
    for x, y, shown, value in placed:
        colour = _colour(value or 0.0, "signed", limit)
        rgba = [float(c) for c in colour[5:-1].split(",")]
        ax.text(x, y, shown, family="monospace", fontsize=10, va="center",
                bbox={"facecolor": (rgba[0] / 255, rgba[1] / 255, rgba[2] / 255, rgba[3]), "edgecolor": "none",
                      "pad": 1.5})
    ax.set_title(f"{title}\n{note}", fontsize=9, loc="left")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
