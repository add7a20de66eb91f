"""The one package that talks to MLflow: the client and its lock (`client`), run lifecycle and
recovery of runs whose process died (`runs`), the registry and pyfunc model (`registry`, `pyfunc`),
per-epoch metrics from Keras (`callback`, which imports TensorFlow and is not re-exported here),
and the compare table and UI command (`reports`).

Stages call the small functions here; each is a no-op when no MLflow run is active, so a stage
also runs (and is tested) without tracking. `start_run` opens the runs: one per stage, nested
under the parent run that `pipeline run` opens.
"""

from pipeline.tracking.client import DEFAULT_EXPERIMENT, check_reachable, configure, current_uri, use
from pipeline.tracking.registry import model_input_column, register_export, save_export_as_mlflow_model, serve_command
from pipeline.tracking.reports import (
    COMPARE_PARAMS,
    compare_runs,
    format_table,
    ui_command,
)
from pipeline.tracking.runs import (
    active,
    add_to_run,
    annotate_runs,
    finished_child,
    log_artifact,
    log_metrics,
    log_params,
    log_text,
    note_reuse,
    process_gone,
    process_tags,
    run_exists,
    run_id,
    run_reference,
    set_tags,
    settle_orphans,
    settle_stale_runs,
    start_run,
)

__all__ = [
    "COMPARE_PARAMS", "DEFAULT_EXPERIMENT", "active", "add_to_run",
    "annotate_runs", "check_reachable", "compare_runs", "configure", "current_uri", "finished_child",
    "format_table", "log_artifact", "log_metrics", "log_params", "log_text", "model_input_column", "note_reuse",
    "process_gone", "process_tags", "register_export", "run_exists", "run_id", "run_reference",
    "save_export_as_mlflow_model", "serve_command", "set_tags", "settle_orphans", "settle_stale_runs",
    "start_run", "ui_command", "use",
]
