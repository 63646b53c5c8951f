"""Studies over the architecture zoo: compound scaling reaches the data, transfer weights load."""

import json
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import CIFAR_SUBSET
from pipeline.spec import parse_spec
from pipeline.study import StudyError, run_study
from pipeline.tracking import absolute_sqlite_uri

TRACKING = "sqlite:///mlruns/mlflow.db"
STORAGE = "sqlite:///mlruns/optuna.db"


def _runs(study_name):
    client = MlflowClient(absolute_sqlite_uri(TRACKING))
    study = optuna.load_study(study_name=study_name, storage=absolute_sqlite_uri(STORAGE))
    return [(trial, client.get_run(trial.user_attrs["mlflow_run_id"])) for trial in study.trials]


def test_arch_search_logs_cost(workdir, tiny_spec):
    tiny_spec["model"] = {"arch": {"choices": ["efficientnet", "mobilenet_v2", "small_cnn"]},
                          "efficientnet": {"phi": {"choices": [0, 2]}},
                          "mobilenet_v2": {"width_mult": 0.5, "expand_ratio": {"low": 2, "high": 4}}}
    run_study(parse_spec(tiny_spec), trials=4)
    for trial, run in _runs("tiny"):
        assert trial.state.name == "COMPLETE"
        metrics = run.data.metrics
        assert metrics["flops_per_image"] > 0
        assert metrics["param_count"] > 0
        assert "latency_p95_ms" in metrics
        arch = trial.params["arch"]
        assert not [name for name in trial.params if "." in name and not name.startswith(arch + ".")]
        expected = 8
        if arch == "efficientnet":
            expected = round(8 * 1.15 ** trial.params["efficientnet.phi"])
        assert metrics["input_resolution"] == expected


def test_transfer_loads_weights_from_file(workdir, tiny_spec):
    from torchvision.models import resnet18

    torch.manual_seed(123)
    reference = resnet18(weights=None).state_dict()
    torch.save(reference, workdir / "resnet18.pth")
    tiny_spec["model"] = {"arch": "resnet18_transfer", "resnet18_transfer": {"mode": "frozen"},
                          "pretrained": {"weights": str(workdir / "resnet18.pth")}}
    tiny_spec["train"]["batch_size"] = 256
    run_study(parse_spec(tiny_spec), trials=1)
    [(trial, run)] = _runs("tiny")
    assert trial.state.name == "COMPLETE"
    assert run.data.tags["playbook.pretrained"] == "True"
    assert run.data.metrics["param_count"] == 11_181_642
    client = MlflowClient(absolute_sqlite_uri(TRACKING))
    folder = Path(client.download_artifacts(run.info.run_id, "model", str(workdir / "download")))
    trained = torch.load(folder / "state_dict.pt", weights_only=True)
    # The frozen backbone keeps the loaded ImageNet-shaped weights exactly.
    assert torch.equal(trained["backbone.conv1.weight"], reference["conv1.weight"])
    assert torch.equal(trained["backbone.layer4.1.bn2.running_var"], reference["layer4.1.bn2.running_var"])
    config = json.loads((folder / "config.json").read_text())
    assert config["arch"] == "resnet18_transfer"


def test_transfer_without_weights_stops_before_trials(workdir, tiny_spec, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(workdir / "empty_torch_home"))
    tiny_spec["model"] = {"arch": "resnet18_transfer"}
    with pytest.raises(StudyError, match="resnet18-f37072fd.pth"):
        run_study(parse_spec(tiny_spec), trials=1)
    assert not (workdir / "mlruns").exists()


def test_transfer_random_init_allowed_and_tagged(workdir, tiny_spec, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(workdir / "empty_torch_home"))
    tiny_spec["model"] = {"arch": "resnet18_transfer", "pretrained": {"allow_random_init": True}}
    tiny_spec["train"]["batch_size"] = 256
    run_study(parse_spec(tiny_spec), trials=1)
    [(trial, run)] = _runs("tiny")
    assert run.data.tags["playbook.pretrained"] == "False"
    assert "random weights" in caplog.text


@pytest.mark.skipif(not CIFAR_SUBSET.is_dir(), reason=f"CIFAR-10 images not found at {CIFAR_SUBSET}")
def test_cifar10_imagefolder_study(workdir):
    spec = parse_spec({
        "name": "cifar", "data": {"source": "imagefolder", "path": str(CIFAR_SUBSET / "train")},
        "model": {"arch": "small_cnn", "small_cnn": {"depth": 2, "width": 16}},
        "train": {"epochs": 1, "batch_size": 128, "lr": 0.003},
        "search": {"trials": 1}, "latency": {"warmup": 2, "repeats": 10},
    })
    outcome = run_study(spec)
    [(trial, run)] = _runs("cifar")
    assert trial.state.name == "COMPLETE"
    assert run.data.params["arch"] == "small_cnn"
    # Ten classes at chance would score 0.10; one epoch of a small CNN does clearly better.
    assert outcome.best.dev_metrics["accuracy"] > 0.2
    assert run.data.metrics["dev_support/airplane"] == 100
