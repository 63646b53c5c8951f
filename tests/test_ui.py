"""The MLflow UI in headless Chromium, and optuna-dashboard's HTTP API, on a finished study.

Both servers listen on 127.0.0.1 only. The browser test uses Debian's chromium and
chromedriver; it skips, saying so, where they are missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline.spec import parse_spec
from pipeline.study import run_study
from pipeline.tracking import absolute_sqlite_uri

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A finished 2-trial study in its own folder, returned as that folder."""
    folder = tmp_path_factory.mktemp("ui")
    here = os.getcwd()
    os.chdir(folder)
    try:
        run_study(parse_spec({
            "name": "ui", "data": {"source": "digits"},
            "model": {"arch": "small_cnn", "small_cnn": {"depth": 1, "width": {"choices": [8, 16]}}},
            "train": {"lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True}, "epochs": 1, "batch_size": 64},
            "search": {"trials": 2}, "latency": {"warmup": 2, "repeats": 10},
        }))
    finally:
        os.chdir(here)
    return folder


@pytest.fixture(scope="module")
def mlflow_ui(finished_study):
    """``mlflow server`` on 127.0.0.1 over the study's SQLite store."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", "sqlite:///mlruns/mlflow.db", "--workers", "1"],
        cwd=finished_study, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/health", server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = "Debian's chromium and chromium-driver are not installed; apt-get install chromium chromium-driver"
        if os.environ.get("PLAYBOOK_REQUIRE_SERVERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium to run this test")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--no-first-run", "--window-size=1600,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _wait_text(driver, *needles: str, timeout: float = 90) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: all(n in _page_text(d) for n in needles))
    return _page_text(driver)


def test_mlflow_ui_shows_study(finished_study, mlflow_ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    client = MlflowClient(absolute_sqlite_uri(f"sqlite:///{finished_study}/mlruns/mlflow.db"))
    experiment = client.get_experiment_by_name("ui")
    study = optuna.load_study(study_name="ui", storage=f"sqlite:///{finished_study}/mlruns/optuna.db")
    run_ids = [trial.user_attrs["mlflow_run_id"] for trial in study.trials]
    eid = experiment.experiment_id

    # The runs table lists the parent run; expanding it shows one child run per trial.
    browser.get(f"{mlflow_ui}/#/experiments/{eid}/runs")
    _wait_text(browser, "study-ui")
    browser.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    runs_page = _wait_text(browser, "trial-0", "trial-1")
    assert "study-ui" in runs_page
    browser.save_screenshot(str(tmp_path / "runs.png"))

    # A child run's page shows its params and metrics.
    trial = study.trials[0]
    browser.get(f"{mlflow_ui}/#/experiments/{eid}/runs/{run_ids[0]}")
    run_page = _wait_text(browser, "dev_macro_f1", "small_cnn.width")
    assert "weight_decay" in run_page
    assert f"{trial.params['small_cnn.width']}" in run_page

    # Its artifacts include the confusion matrix, which the UI can preview as an image.
    browser.get(f"{mlflow_ui}/#/experiments/{eid}/runs/{run_ids[0]}/artifacts")
    artifacts_page = _wait_text(browser, "confusion_matrix.png")
    for name in ("misclassified.png", "errors.csv", "error_analysis.json", "diagnosis.json", "model"):
        assert name in artifacts_page
    browser.find_element(By.XPATH, "//*[text()='confusion_matrix.png']").click()
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    local = Path(client.download_artifacts(run_ids[0], "confusion_matrix.png", str(tmp_path)))
    width = Image.open(local).width
    # The preview is the logged PNG itself, loaded by the browser as a blob.
    WebDriverWait(browser, 60).until(
        lambda d: any((img.get_attribute("src") or "").startswith("blob:")
                      and d.execute_script("return arguments[0].naturalWidth", img) == width
                      for img in d.find_elements(By.TAG_NAME, "img")))

    # The compare view of two child runs shows their differing params side by side.
    runs = urllib.parse.quote(json.dumps(run_ids))
    experiments = urllib.parse.quote(json.dumps([eid]))
    browser.get(f"{mlflow_ui}/#/compare-runs?runs={runs}&experiments={experiments}")
    compare_page = _wait_text(browser, "Parameters", "trial-0", "trial-1")
    for trial in study.trials:
        assert str(trial.params["lr"]) in compare_page
    browser.save_screenshot(str(tmp_path / "compare.png"))


def test_optuna_dashboard_lists_trials(finished_study):
    executable = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    if executable is None:
        pytest.skip("optuna-dashboard is not installed; pip install -e '.[test]'")
    port = _free_port()
    server = subprocess.Popen([executable, "sqlite:///mlruns/optuna.db", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=finished_study, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/api/studies", server)
        with urllib.request.urlopen(f"{url}/api/studies", timeout=10) as response:
            summaries = json.load(response)["study_summaries"]
        [summary] = [s for s in summaries if s["study_name"] == "ui"]
        with urllib.request.urlopen(f"{url}/api/studies/{summary['study_id']}", timeout=30) as response:
            detail = json.load(response)
        study = optuna.load_study(study_name="ui", storage=f"sqlite:///{finished_study}/mlruns/optuna.db")
        assert [t["number"] for t in detail["trials"]] == [t.number for t in study.trials]
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]
        for served, trial in zip(detail["trials"], study.trials):
            assert served["values"] == [trial.value]
    finally:
        server.terminate()
        server.wait(timeout=60)
