"""Names derived from a config: its run name and fingerprint."""

from __future__ import annotations

from pipeline.config.schema import Config, flatten


def run_name(config: Config) -> str:
    """A name that says what the model is, e.g. `sst2-bilstm-2x128` or `sst2-bigru-2x128` (also its
    export folder)."""
    cell = {"lstm": "lstm", "gru": "gru", "simple_rnn": "rnn"}[config.model.cell]
    kind = f"bi{cell}" if config.model.bidirectional else cell
    members = f"-ensemble{config.model.ensemble}" if config.model.ensemble > 1 else ""
    return f"{config.name}-{kind}-{config.model.layers}x{config.model.units}{members}"


def fingerprint(config: Config, length: int = 6) -> str:
    """A short hash of the resolved config: equal configs, equal fingerprints.

    Values are already typed by `load_config`, so `3` and `"3"` cannot give two fingerprints.
    """
    import hashlib
    import json

    text = json.dumps(flatten(config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
