"""The Makefile's targets that touch the user's files: `make clean` removes only what was generated."""

import shutil
import subprocess

import pytest

from tests.conftest import ROOT

KEPT = ["data/README.md", "data/sst2/glue-train.tsv", "data/tinyshakespeare/input.txt",
        "data/tfds/downloads/manual/aclImdb_v1.tar.gz", "configs/mine.yaml"]
GENERATED = ["data/work/sst2/prepare/DONE", "models/sst2-bilstm-2x64/1/saved_model.pb", "mlruns/1/meta.yaml",
             "mlflow.db", "optuna.db", ".venv/bin/python", ".pytest_cache/README.md"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_clean_keeps_shipped_corpora_and_placed_downloads(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in KEPT + GENERATED:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    assert [name for name in KEPT if not (tmp_path / name).exists()] == []
    assert [name for name in GENERATED if (tmp_path / name).exists()] == []
