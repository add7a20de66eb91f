"""The MLflow model that `export.register_as` logs: an export of this pipeline behind pyfunc.

MLflow logs this file as "model from code": it is copied into the model and run when the model
is loaded, so nothing is pickled and the served model needs TensorFlow and tensorflow-text, not
this package. The SavedModel travels as the model's `saved_model` artifact.

Requests carry raw text only; tokenization happens inside the SavedModel.
  - sentiment: a `text` column in, `label` and `probabilities` (label -> probability) out;
  - language model: a `prompt` column in, `text` (prompt and continuation) out, with the
    optional params `max_tokens`, `temperature`, `top_k` and `seed`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd

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
        import tensorflow as tf

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if self.info["task"] == "lm":
            settings = {**GENERATION_DEFAULTS, **(params or {})}
            prompts = frame["prompt"].astype(str).tolist()
            out = self.saved.signatures["generate"](
                prompt=tf.constant(prompts), max_tokens=tf.constant(int(settings["max_tokens"]), tf.int32),
                temperature=tf.constant(float(settings["temperature"]), tf.float32),
                top_k=tf.constant(int(settings["top_k"]), tf.int32), seed=tf.constant(int(settings["seed"]), tf.int64))
            return pd.DataFrame({"text": [t.decode("utf-8") for t in out["text"].numpy()]})
        out = self.saved.signatures["serving_default"](text=tf.constant(frame["text"].astype(str).tolist()))
        labels = self.info["labels"]
        return pd.DataFrame({
            "label": [label.decode("utf-8") for label in out["label"].numpy()],
            "probabilities": [dict(zip(labels, map(float, row), strict=True)) for row in out["probabilities"].numpy()],
        })


mlflow.models.set_model(ExportedTextModel())
