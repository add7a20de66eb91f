"""`pipeline run` against a real `mlflow server` over HTTP, checked through the server's API,
through `pipeline compare` and through the MLflow UI in headless Chromium.

One server per module (SQLite store, artifacts proxied to a local folder) on a free port of
127.0.0.1, and two tiny runs logged to it by `pipeline run` subprocesses, as from another machine.
The browser test saves its screenshots under $PIPELINE_TEST_ARTIFACTS (default: test-artifacts/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import NamedTuple

import mlflow
import pytest
from mlflow.entities import Run

from pipeline.config import load_config
from tests.conftest import ROOT, lm_overrides, tiny_overrides, write_corpus, write_label_text
from tests.mlflow_servers import MLflowServer, child_env, serve_model

EXPERIMENT = "server"
UNITS = (8, 16)  # one run per value: different settings, so different run names
REGISTERED_UNITS, SENTIMENT_MODEL, LM_MODEL = 16, "tiny-sentiment", "tiny-lm"
STAGES = ["prepare", "tokenize", "train", "evaluate", "export"]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# On a closed network Chromium hangs waiting for sign-in, updates and QUIC probes unless told not to try;
# --no-sandbox because CI runs as root, --disable-dev-shm-usage because containers have a tiny /dev/shm.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1600,1200"]
UI_TIMEOUT = 30


class LoggedRuns(NamedTuple):
    server: MLflowServer
    experiment_id: str
    parents: dict[int, Run]  # by model.units
    runs: list[Run]  # parents and their stage runs


def pipeline_command(url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`pipeline ARGS` in a new process that tracks to `url`."""
    command = [str(Path(sys.executable).with_name("pipeline")), *args]
    return subprocess.run(command, cwd=cwd, env=child_env(url), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def logged_runs(mlflow_server, tmp_path_factory) -> LoggedRuns:
    """Two tiny sentiment runs in one experiment of the server, differing in model.units."""
    root = tmp_path_factory.mktemp("server-runs")
    files = {"train": write_label_text(root / "train.txt", 80, seed=1),
             "validation": write_label_text(root / "dev.txt", 20, seed=2)}
    for units in UNITS:
        overrides = [*tiny_overrides(files, root), f"model.units={units}"]
        if units == REGISTERED_UNITS:
            overrides.append(f"export.register_as={SENTIMENT_MODEL}")
        done = pipeline_command(mlflow_server.url, "run", "--workdir", str(root / f"work-{units}"),
                                "--experiment", EXPERIMENT, *[a for o in overrides for a in ("--set", o)], cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id], max_results=100)
    parents = {int(r.data.params["model.units"]): r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert sorted(parents) == list(UNITS), [r.info.run_name for r in runs]
    return LoggedRuns(mlflow_server, experiment_id, parents, runs)


def test_parent_runs_have_test_metrics_and_a_nested_run_per_stage(logged_runs):
    for units, parent in logged_runs.parents.items():
        assert parent.info.run_name == f"tiny-bilstm-2x{units}-{parent.data.tags['config_fingerprint']}"
        assert parent.info.status == "FINISHED"
        assert 0.0 <= parent.data.metrics["test_accuracy"] <= 1.0
        children = [r for r in logged_runs.runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.info.run_name for r in children) == sorted(STAGES)
        assert all(r.info.status == "FINISHED" for r in children)


def test_artifacts_go_through_the_server(logged_runs, tmp_path):
    url = logged_runs.server.url
    client = mlflow.MlflowClient(tracking_uri=url)
    # Proxied artifacts: the client only knows the server, never the folder they are stored in.
    assert client.get_experiment(logged_runs.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    for units, parent in logged_runs.parents.items():
        out = tmp_path / str(units)
        config_file = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="config.yaml",
                                                          dst_path=str(out), tracking_uri=url)
        assert load_config(config_file).model.units == units
        stage_runs = {r.info.run_name: r for r in logged_runs.runs
                      if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        metrics_file = mlflow.artifacts.download_artifacts(run_id=stage_runs["evaluate"].info.run_id,
                                                           artifact_path="evaluate/metrics.json", dst_path=str(out),
                                                           tracking_uri=url)
        metrics = json.loads(Path(metrics_file).read_text(encoding="utf-8"))
        assert metrics["test_accuracy"] == pytest.approx(parent.data.metrics["test_accuracy"])
        export_run = stage_runs["export"].info.run_id
        listed = {a.path for a in client.list_artifacts(export_run, "saved_model")}
        assert {"saved_model/saved_model.pb", "saved_model/pipeline.json"} <= listed
        saved_model = Path(mlflow.artifacts.download_artifacts(run_id=export_run, artifact_path="saved_model",
                                                               dst_path=str(out), tracking_uri=url))
        assert json.loads((saved_model / "pipeline.json").read_text(encoding="utf-8"))["task"] == "sentiment"
        assert (saved_model / "saved_model.pb").stat().st_size > 0
    stored = logged_runs.server.root / "artifacts" / logged_runs.experiment_id
    exports = list(stored.glob("*/artifacts/saved_model/saved_model.pb"))
    assert len(exports) == len(UNITS), "the server stores what clients upload"
    assert len(list(stored.glob("models/*/artifacts/artifacts/*/saved_model.pb"))) == 1, "and the registered model"


def test_saved_model_from_the_server_classifies_like_the_export(logged_runs, tmp_path):
    from pipeline.tools import predict

    parent = logged_runs.parents[UNITS[0]]
    export_run = next(r for r in logged_runs.runs
                      if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.info.run_name == "export")
    downloaded = mlflow.artifacts.download_artifacts(run_id=export_run.info.run_id, artifact_path="saved_model",
                                                     dst_path=str(tmp_path), tracking_uri=logged_runs.server.url)
    texts = ["a great and moving film", "a dull and boring mess"]
    expected = predict.classify(parent.data.tags["export_path"], texts)
    assert predict.classify(downloaded, texts) == expected


def _invoke(url: str, payload: dict) -> list[dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def test_registered_sentiment_model_is_served_from_raw_text(logged_runs, tmp_path):
    from pipeline.tools import predict

    client = mlflow.MlflowClient(tracking_uri=logged_runs.server.url)
    version = client.get_model_version(SENTIMENT_MODEL, "1")
    parent = logged_runs.parents[REGISTERED_UNITS]
    export_run = next(r for r in logged_runs.runs
                      if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.info.run_name == "export")
    assert export_run.data.tags["registered_model"] == f"models:/{SENTIMENT_MODEL}/1"
    assert version.run_id == export_run.info.run_id
    texts = ["a great and moving film", "a dull and boring mess", "i loved it , truly great"]
    with serve_model(f"models:/{SENTIMENT_MODEL}/1", logged_runs.server.url, tmp_path) as url:
        predictions = _invoke(url, {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
    assert len(predictions) == len(texts)
    expected = predict.classify(parent.data.tags["export_path"], texts)
    for served, local in zip(predictions, expected, strict=True):
        assert set(served) == {"label", "probabilities"} and served["label"] == local["label"]
        assert served["probabilities"] == pytest.approx(local["probabilities"], abs=1e-6)
        assert sum(served["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_registered_language_model_is_served_from_raw_prompts(mlflow_server, tmp_path):
    from pipeline.tools import predict

    corpus = write_corpus(tmp_path / "corpus.txt")
    overrides = [*lm_overrides(corpus, tmp_path), f"export.register_as={LM_MODEL}"]
    done = pipeline_command(mlflow_server.url, "run", "--workdir", str(tmp_path / "work"), "--experiment", "lm",
                            *[a for o in overrides for a in ("--set", o)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    version = mlflow.MlflowClient(tracking_uri=mlflow_server.url).get_model_version(LM_MODEL, "1")
    prompts = ["ROMEO:", ""]
    settings = {"max_tokens": 12, "temperature": 0.9, "top_k": 5, "seed": 3}
    with serve_model(f"models:/{LM_MODEL}/1", mlflow_server.url, tmp_path) as url:
        predictions = _invoke(url, {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in prompts]},
                                    "params": settings})
    expected, _ = predict.generate(version.tags["export_path"], prompts, **settings)
    assert [p["text"] for p in predictions] == expected
    assert predictions[0]["text"].startswith("ROMEO:") and len(predictions[0]["text"]) > len("ROMEO:")


def test_compare_lists_both_runs_with_test_accuracy(logged_runs, tmp_path):
    done = pipeline_command(logged_runs.server.url, "compare", "--experiment", EXPERIMENT,
                            "--tracking-uri", logged_runs.server.url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    header, *rows = done.stdout.strip().splitlines()
    columns = header.split()
    assert columns[:2] == ["run", "status"] and "test_accuracy" in columns and "model.units" in columns
    by_name = {row.split()[0]: row.split() for row in rows}
    assert sorted(by_name) == sorted(p.info.run_name for p in logged_runs.parents.values())
    for units, parent in logged_runs.parents.items():
        cells = by_name[parent.info.run_name]
        assert cells[columns.index("model.units")] == str(units)
        assert cells[columns.index("test_accuracy")] == f"{parent.data.metrics['test_accuracy']:.4f}"


# The browser ----------------------------------------------------------------------------------


@pytest.fixture
def screenshots() -> Path:
    """Where the browser test's screenshots go: $PIPELINE_TEST_ARTIFACTS, else test-artifacts/.

    A relative path is taken from the repository: the tests run in a temporary working directory.
    """
    folder = ROOT / (os.environ.get("PIPELINE_TEST_ARTIFACTS") or "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium under Selenium, with a fresh profile; skipped only where it is missing
    and PIPELINE_REQUIRE_BROWSER is unset (CI sets it, so CI never skips).

    Module-scoped so that, asked for before `logged_runs`, it skips before any server starts.
    """
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = f"no browser: {', '.join(missing)} missing; apt-get install chromium chromium-driver"
        if os.environ.get("PIPELINE_REQUIRE_BROWSER"):
            pytest.fail(message + " (PIPELINE_REQUIRE_BROWSER is set)")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    # Both paths are given; offline, Selenium Manager cannot try to download a browser or a driver anyway.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def wait_until(driver, condition, what: str, screenshots: Path):
    """Wait for `condition(driver)`; on timeout save a screenshot and fail saying what never showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, UI_TIMEOUT).until(condition)
    except TimeoutException:
        shot = screenshots / "mlflow-ui-failure.png"
        driver.save_screenshot(str(shot))
        text = driver.find_element(By.TAG_NAME, "body").text[:2000]
        pytest.fail(f"{what} not shown within {UI_TIMEOUT} s at {driver.current_url} (screenshot {shot}); "
                    f"page text:\n{text}")


def close_assistant(driver) -> None:
    """Close the MLflow Assistant side panel, which a fresh profile opens and which hides part of the page."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "[data-component-id='mlflow.assistant.chat_panel.close']"):
        button.click()


def show_metric_column(driver, metric: str, screenshots: Path) -> None:
    """Tick `metric` in the runs table's Columns menu: MLflow 3 hides metric columns by default."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.XPATH, "//button[@data-testid='column-selection-dropdown'][normalize-space()='Columns']"
                        ).click()
    search = wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, "input[placeholder='Search columns']"),
                        "the column search box", screenshots)
    search.send_keys(metric)
    wait_until(driver, lambda d: d.find_element(
        By.XPATH, f"//*[@data-testid='column-selector-tree']//*[normalize-space()='{metric}'][not(*)]"),
        f"{metric} in the column menu", screenshots).click()
    search.send_keys(Keys.ESCAPE)


def test_mlflow_ui_shows_both_runs_and_compares_them(browser, logged_runs, screenshots):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, experiment_id = logged_runs.server.url, logged_runs.experiment_id
    names = sorted(p.info.run_name for p in logged_runs.parents.values())
    # A fresh profile opens experiments in the GenAI view; the runs table is the "machine learning" one.
    browser.get(f"{url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
    for name in names:
        wait_until(browser, lambda d, name=name: d.find_elements(By.LINK_TEXT, name), f"run {name}", screenshots)
    close_assistant(browser)
    show_metric_column(browser, "test_accuracy", screenshots)
    column = "[col-id='metrics.`test_accuracy`']"  # the runs table (ag-grid) names columns by their search key
    header = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f".ag-header-cell{column}"),
                        "the test_accuracy column", screenshots)
    assert header.text == "test_accuracy"
    cells = browser.find_elements(By.CSS_SELECTOR, f".ag-row .ag-cell{column}")
    expected = sorted(p.data.metrics["test_accuracy"] for p in logged_runs.parents.values())
    assert sorted(float(c.text) for c in cells) == pytest.approx(expected, abs=1e-3)
    # Fit the name and metric columns to their text (double-click on a column's edge), for the screenshot.
    for fitted in ("[col-id='attributes.`Run Name`']", column):
        ActionChains(browser).double_click(
            browser.find_element(By.CSS_SELECTOR, f".ag-header-cell{fitted} .ag-header-cell-resize")).perform()
    browser.save_screenshot(str(screenshots / "mlflow-experiment-runs.png"))

    run_ids = [p.info.run_id for p in logged_runs.parents.values()]
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id]),
                                    "workflowType": "machine_learning"})
    browser.get(f"{url}/#/compare-runs?{query}")
    expected_texts = ["Comparing 2 Runs", *names, *run_ids, "test_accuracy"]
    wait_until(browser, lambda d: all(t in d.find_element(By.TAG_NAME, "body").text for t in expected_texts),
               "the compare view of both runs", screenshots)
    close_assistant(browser)
    browser.save_screenshot(str(screenshots / "mlflow-compare-runs.png"))
