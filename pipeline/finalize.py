"""The final test: score the best feasible trial on the test split, once per study.

Every decision of the search was made on dev, so the dev score of the chosen trial
is optimistic. The test split measures by how much, and it only stays an unbiased
estimate if it is used once; a second run needs ``--force``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from mlflow.exceptions import MlflowException

from pipeline.diagnosis import Diagnosis, render
from pipeline.logged import load_logged_trial
from pipeline.messages import LANGUAGES, text
from pipeline.spec import StudySpec
from pipeline.stages import SCORE_FIELDS, diagnosis_stage, evaluate_stage
from pipeline.study import ATTR_PARENT_RUN, ATTR_SPLIT_HASH, StudyError, best_feasible_trial, resolve_device
from pipeline.tracking import Tracker, absolute_sqlite_uri

log = logging.getLogger(__name__)

TAG_FINAL_TRIAL = "playbook.final_test.trial"
FINAL_ARTIFACT = "final_test.json"


class AlreadyFinalized(StudyError):
    """The final test already ran on this study and ``--force`` was not given."""

    def __init__(self, earlier: dict[str, Any], message: str) -> None:
        self.earlier = earlier
        super().__init__(message)


@dataclass(frozen=True)
class FinalResult:
    """Test metrics of the chosen trial and the diagnosis including overfitting to dev."""

    study_name: str
    trial_number: int
    run_id: str
    test: dict[str, float]
    dev: dict[str, float]
    diagnosis: Diagnosis
    runs: int  # how many times the final test has run on this study, this one included

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study_name, "trial_number": self.trial_number, "run_id": self.run_id,
                "test": self.test, "dev": self.dev, "diagnosis": self.diagnosis.to_dict(), "runs": self.runs,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def finalize(spec: StudySpec, storage: str, tracking_uri: str, force: bool = False,
             earlier_out: list[dict[str, Any]] | None = None) -> FinalResult:
    """Evaluate the study's best feasible trial on test and log the result on the parent run.

    Args:
        spec: the study's spec.
        storage: the study's Optuna storage URL.
        tracking_uri: the study's MLflow tracking URI.
        force: run again even if the final test already ran.
        earlier_out: if given, receives the earlier result when there is one.

    Raises:
        AlreadyFinalized: when the test already ran and ``force`` is false.
        StudyError: when the study does not exist or has no feasible trial.
    """
    try:
        study = optuna.load_study(study_name=spec.name, storage=absolute_sqlite_uri(storage))
    except KeyError:
        raise StudyError(f"study '{spec.name}' not found in {storage}; run 'playbook run' on the spec first") from None
    best = best_feasible_trial(study.get_trials(deepcopy=False), spec.objective.direction)
    if best is None:
        raise StudyError(f"study '{spec.name}' has no complete trial that meets every constraint; "
                         "there is nothing to test")

    tracker = Tracker(tracking_uri, spec.name)
    parent_run_id = study.user_attrs[ATTR_PARENT_RUN]
    earlier = _earlier_result(tracker, parent_run_id)
    if earlier is not None:
        if earlier_out is not None:
            earlier_out.append(earlier)
        if not force:
            raise AlreadyFinalized(earlier, f"the final test of study '{spec.name}' already ran (trial "
                                            f"{earlier['trial_number']}); the test split stays an unbiased "
                                            "estimate only if it is used once. Pass --force to run it again.")

    trial = load_logged_trial(tracker, best.user_attrs["mlflow_run_id"])
    data, split = trial.load_data(spec)
    if split.hash != study.user_attrs.get(ATTR_SPLIT_HASH):
        raise StudyError(f"the logged split of trial {best.number} does not match the study's split; "
                         "the study's records are inconsistent")
    prepared = trial.prepare(data, split, ("test",))
    evaluation = evaluate_stage(trial.build_model(), prepared, resolve_device(spec.device), data.num_classes,
                                latency=None, parts=("test",))
    test_score = evaluation.scores["test"]

    errors = {part: 1.0 - trial.evaluation[part]["accuracy"] for part in ("train", "train_dev", "dev")}
    errors["test"] = test_score.error
    sizes = {part: sum(trial.evaluation[part]["support"]) for part in ("train", "train_dev", "dev")}
    sizes["test"] = sum(test_score.support)
    diagnosis = diagnosis_stage(errors, spec.diagnosis, sizes)
    result = FinalResult(
        study_name=spec.name, trial_number=best.number, run_id=trial.run_id,
        test={field: getattr(test_score, field) for field in SCORE_FIELDS} | {"error": test_score.error},
        dev={field: trial.evaluation["dev"][field] for field in SCORE_FIELDS} | {"error": errors["dev"]},
        diagnosis=diagnosis, runs=(earlier or {}).get("runs", 0) + 1,
    )
    _log_final(tracker, parent_run_id, result, earlier)
    return result


def _earlier_result(tracker: Tracker, parent_run_id: str) -> dict[str, Any] | None:
    run = tracker.client.get_run(parent_run_id)
    if TAG_FINAL_TRIAL not in run.data.tags:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = tracker.client.download_artifacts(parent_run_id, FINAL_ARTIFACT, scratch)
        except (MlflowException, OSError):
            return {"trial_number": run.data.tags[TAG_FINAL_TRIAL], "runs": 1, "test": {}, "dev": {}}
        return json.loads(Path(path).read_text(encoding="utf-8"))


def _log_final(tracker: Tracker, parent_run_id: str, result: FinalResult, earlier: dict[str, Any] | None) -> None:
    step = result.runs - 1
    metrics = {f"test_{name}": value for name, value in result.test.items()}
    metrics["dev_overfitting"] = result.diagnosis.dev_overfitting
    tracker.log_metrics(parent_run_id, metrics, step=step)
    tracker.set_tags(parent_run_id, {TAG_FINAL_TRIAL: result.trial_number, "playbook.final_test.run_id": result.run_id,
                                     "playbook.final_test.runs": result.runs})
    record = result.to_dict()
    if earlier is not None:
        record["earlier"] = earlier
    tracker.log_json(parent_run_id, record, FINAL_ARTIFACT)
    for lang in LANGUAGES:
        tracker.log_text(parent_run_id, render(result.diagnosis, lang) + "\n", f"final_diagnosis.{lang}.txt")


def render_final(result: FinalResult | dict[str, Any], lang: str = "en") -> str:
    """Write the test and dev metrics side by side, and the diagnosis with the test gap."""
    data = result.to_dict() if isinstance(result, FinalResult) else result
    lines = [text("final.title", lang, study=data.get("study", "?"), number=data["trial_number"],
                  runs=data.get("runs", 1)),
             f"  {'':<18}{'dev':>10}{'test':>10}"]
    for name in (*SCORE_FIELDS, "error"):
        dev, test = data["dev"].get(name), data["test"].get(name)
        if dev is not None and test is not None:
            lines.append(f"  {name:<18}{dev:>10.4f}{test:>10.4f}")
    if "diagnosis" in data:
        lines += ["", render(Diagnosis.from_dict(data["diagnosis"]), lang)]
    return "\n".join(lines)
