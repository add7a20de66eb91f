import subprocess
import sys

import mlflow

from pipeline.tracking import client

# Each process imports the tracking module, then waits for the others to have done so, so that
# all of them touch the new store at once.
TOUCH = """
import sys, time
from pathlib import Path
from pipeline import tracking
uri, ready, index, count = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(ready / index).touch()
while len(list(ready.iterdir())) < count:
    time.sleep(0.001)
tracking.configure(uri, "together")
"""


def test_runs_started_together_on_a_new_sqlite_store_all_get_it(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    ready = tmp_path / "ready"
    ready.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", TOUCH, uri, str(ready), str(i), "3"],
                                  stderr=subprocess.PIPE, text=True) for i in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], "\n".join(e[-1500:] for e in errors)
    experiments = mlflow.MlflowClient(uri).search_experiments(filter_string="name = 'together'")
    assert len(experiments) == 1


def test_the_lock_sits_beside_the_database_sqlite_opens(tmp_path):
    # MLflow percent-encodes its default URI; SQLite opens the decoded path, so the lock goes there.
    with client._creation_lock(f"sqlite:///{tmp_path}/sp%20ace/mlflow.db"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sp ace"]
    assert (tmp_path / "sp ace" / "mlflow.db.lock").is_file()
