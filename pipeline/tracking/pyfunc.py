"""The MLflow model that `export.register_as` logs and `pipeline serve` saves: an export of this
pipeline behind pyfunc.

MLflow logs this file as "model from code": it is copied into the model and run when the model
is loaded, so nothing is pickled and the served model needs TensorFlow and tensorflow-text, not
this package. The SavedModel travels as the model's `saved_model` artifact.

Requests carry raw text only; tokenization happens inside the SavedModel.
  - sentiment: a `text` column in, `label` and `probabilities` (label -> probability) out;
  - language model: a `prompt` column in, `text` (prompt and continuation) out, with the
    optional params `max_tokens`, `temperature`, `top_k` and `seed`.
An empty batch gets an empty answer. A value that is not a string, or a setting the decoder
cannot use, raises MLflow's INVALID_PARAMETER_VALUE, which the scoring server answers with 400
and that message. Unchecked, a number would be classified as its digits, and a null or an empty
batch would fail inside TensorFlow and reach the client as MLflow's generic "unexpected error".
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

GENERATION_DEFAULTS = {"max_tokens": 100, "temperature": 0.8, "top_k": 0, "seed": 0}


class ExportedTextModel(mlflow.pyfunc.PythonModel):
    """pyfunc over a SavedModel written by `pipeline export`."""

    def load_context(self, context):
        import tensorflow as tf
        import tensorflow_text  # noqa: F401 - registers the SentencePiece ops the SavedModel uses

        path = Path(context.artifacts["saved_model"])
        self.info = json.loads((path / "pipeline.json").read_text(encoding="utf-8"))
        self.saved = tf.saved_model.load(str(path))

    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if self.info["task"] == "lm":
            return self._generate(strings(frame, "prompt"), generation_settings(params))
        return self._classify(strings(frame, "text"))

    def _classify(self, texts: list[str]) -> pd.DataFrame:
        import tensorflow as tf

        if not texts:
            return pd.DataFrame({"label": [], "probabilities": []})
        out = self.saved.signatures["serving_default"](text=tf.constant(texts, tf.string))
        labels = self.info["labels"]
        return pd.DataFrame({
            "label": [label.decode("utf-8") for label in out["label"].numpy()],
            "probabilities": [dict(zip(labels, map(float, row), strict=True)) for row in out["probabilities"].numpy()],
        })

    def _generate(self, prompts: list[str], settings: dict) -> pd.DataFrame:
        import tensorflow as tf

        if not prompts:
            return pd.DataFrame({"text": []})
        out = self.saved.signatures["generate"](
            prompt=tf.constant(prompts, tf.string), max_tokens=tf.constant(settings["max_tokens"], tf.int32),
            temperature=tf.constant(settings["temperature"], tf.float32),
            top_k=tf.constant(settings["top_k"], tf.int32), seed=tf.constant(settings["seed"], tf.int64))
        return pd.DataFrame({"text": [t.decode("utf-8") for t in out["text"].numpy()]})


def strings(frame: pd.DataFrame, column: str) -> list[str]:
    """The values of `column`, each of which must be a string ("" included).

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE naming the first row that holds something else.
    """
    values = frame[column].tolist()
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise MlflowException.invalid_parameter_value(
                f"column '{column}' must hold strings; row {row} holds {type(value).__name__} {reprlib.repr(value)}")
    return values


def generation_settings(params: dict | None) -> dict:
    """`GENERATION_DEFAULTS` updated by the request's params, checked as `pipeline generate` checks them.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE for fewer than one token or a negative temperature.
    """
    settings = {**GENERATION_DEFAULTS, **(params or {})}
    settings = {"max_tokens": int(settings["max_tokens"]), "temperature": float(settings["temperature"]),
                "top_k": int(settings["top_k"]), "seed": int(settings["seed"])}
    if settings["max_tokens"] < 1:
        raise MlflowException.invalid_parameter_value(f"max_tokens must be at least 1; got {settings['max_tokens']}")
    if settings["temperature"] < 0:
        raise MlflowException.invalid_parameter_value(
            f"temperature must be 0 (greedy) or positive; got {settings['temperature']}")
    return settings


mlflow.models.set_model(ExportedTextModel())
