"""The model registry: exports logged as MLflow models, and the serve command."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import mlflow

from pipeline.errors import TrackingError

log = logging.getLogger(__name__)

def register_export(path: Path, name: str, key: str, task: str) -> str:
    """Log an export as an MLflow model in the active run and register it as a version of `name`.

    The version is tagged with the export's cache key, so an export registered once is not
    registered again by a later run that reuses it; that run gets the existing version.
    Returns `models:/<name>/<version>`, the URI that `mlflow models serve -m` takes.
    """
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("export_key") == key:
            log.info("export already registered as models:/%s/%s", name, version.version)
            return f"models:/{name}/{version.version}"
    info = mlflow.pyfunc.log_model(name="model", registered_model_name=name, **_export_as_mlflow_model(path, task))
    version = info.registered_model_version
    client.set_model_version_tag(name, str(version), "export_key", key)
    client.set_model_version_tag(name, str(version), "export_path", str(path))
    return f"models:/{name}/{version}"


def save_export_as_mlflow_model(path: Path, task: str, destination: Path) -> None:
    """Write the export at `path` as an MLflow model into the new folder `destination`, the same
    model that `register_export` logs, for `mlflow models serve` to load from disk."""
    mlflow.pyfunc.save_model(path=str(destination), **_export_as_mlflow_model(path, task))


def _export_as_mlflow_model(path: Path, task: str) -> dict[str, Any]:
    """The arguments of `mlflow.pyfunc.log_model` and `save_model` that wrap an export: the
    model-from-code file, the SavedModel as its `saved_model` artifact, the request signature
    (a `text` column; or a `prompt` column and the generation params) and what serving needs."""
    from importlib import metadata

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from pipeline.tracking import pyfunc

    if task == "lm":
        defaults = pyfunc.GENERATION_DEFAULTS
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", "prompt")]),
            params=ParamSchema([ParamSpec("max_tokens", "long", defaults["max_tokens"]),
                                ParamSpec("temperature", "double", defaults["temperature"]),
                                ParamSpec("top_k", "long", defaults["top_k"]),
                                ParamSpec("seed", "long", defaults["seed"])]))
    else:
        signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]))
    requirements = [f"{package}=={metadata.version(package)}"
                    for package in ("tensorflow", "tensorflow-text", "pandas")]
    return {"python_model": pyfunc.__file__, "artifacts": {"saved_model": str(path)},
            "signature": signature, "pip_requirements": requirements}


def model_input_column(model_uri: str) -> str:
    """The first input column of the MLflow model at `model_uri` (`text` or `prompt` for this
    pipeline's models); raises `TrackingError` if there is no such model."""
    try:
        info = mlflow.models.get_model_info(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TrackingError(f"no MLflow model at {model_uri} ({first_line}); "
                            f"the tracking URI in force is {mlflow.get_tracking_uri()}") from None
    inputs = info.signature.inputs.input_names() if info.signature and info.signature.inputs else []
    return str(inputs[0]) if inputs else "text"


def serve_command(model_uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` for `model_uri` in this environment, and the environment to run it in.

    MLflow starts its scoring server as `uvicorn`, by name, and exits 127 where PATH has no
    uvicorn: this interpreter's bin folder leads the child's PATH, so `.venv/bin/pipeline serve`
    works without an activated venv. The child resolves `models:/` URIs with the tracking URI in force.
    """
    import sys

    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", host, "--port", str(port)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    return command, env
