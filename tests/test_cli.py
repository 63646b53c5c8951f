"""The command line as a user runs it: real subprocesses in a temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from pipeline.tracking import absolute_sqlite_uri


def _run(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_run_prints_summary(workdir, tiny_spec):
    (workdir / "spec.yaml").write_text(yaml.safe_dump(tiny_spec))
    result = _run(["run", "spec.yaml", "--trials", "1", "--lang", "vi"], workdir)
    assert result.returncode == 0, result.stderr
    assert "Trial tốt nhất đạt ràng buộc: #0" in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in result.stdout
    assert "trial 0 finished" in result.stderr  # logs stay English, on stderr
    assert "baseline majority" in result.stderr


@pytest.mark.parametrize("change, expected", [
    ({"model": {"arch": "vgg99"}}, "model.arch"),
    ({"train": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "low > 0"),
    ({"data": {"source": "imagefolder", "path": "missing_folder"}}, "folder not found"),
])
def test_bad_spec_exits_2_and_creates_nothing(workdir, change, expected):
    (workdir / "bad.yaml").write_text(yaml.safe_dump({"name": "bad", **change}))
    result = _run(["run", "bad.yaml"], workdir)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "mlruns").exists()


def test_missing_spec_file(workdir):
    result = _run(["run", "nope.yaml"], workdir)
    assert result.returncode == 2
    assert "spec file not found: nope.yaml" in result.stderr


def test_help_lists_flags(workdir):
    result = _run(["run", "--help"], workdir)
    assert result.returncode == 0
    for flag in ("--trials", "--storage", "--tracking-uri", "--seed", "--lang"):
        assert flag in result.stdout


def test_console_script_installed():
    script = Path(sys.executable).with_name("playbook")
    assert script.exists(), "install the package with pip install -e . to get the playbook command"


def test_finalize_rerun_report_commands(workdir, tiny_spec):
    (workdir / "spec.yaml").write_text(yaml.safe_dump(tiny_spec))
    assert _run(["run", "spec.yaml", "--trials", "1", "-q"], workdir).returncode == 0

    first = _run(["finalize", "spec.yaml"], workdir)
    assert first.returncode == 0, first.stderr
    assert "Final test of study 'tiny', best feasible trial #0" in first.stdout

    second = _run(["finalize", "spec.yaml"], workdir)
    assert second.returncode == 2
    assert "already ran" in second.stderr
    assert "--force" in second.stderr
    assert "earlier result" in second.stdout

    study = optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri("sqlite:///mlruns/optuna.db"))
    run_id = study.trials[0].user_attrs["mlflow_run_id"]
    rerun = _run(["rerun", run_id, "--stage", "evaluate"], workdir)
    assert rerun.returncode == 0, rerun.stderr
    assert "0 of" in rerun.stdout

    report = _run(["report", "spec.yaml"], workdir)
    assert report.returncode == 0, report.stderr
    assert (workdir / "mlruns" / "reports" / "tiny.html").is_file()


def test_rerun_unknown_run(workdir, tiny_spec):
    (workdir / "spec.yaml").write_text(yaml.safe_dump(tiny_spec))
    result = _run(["rerun", "0123456789abcdef", "--stage", "diagnosis"], workdir)
    assert result.returncode == 2
    assert "run 0123456789abcdef not found" in result.stderr
