"""Read a logged trial back from MLflow: its spec, split, model and stage outputs.

``playbook rerun`` and ``playbook finalize`` start here, so everything they need
comes from the run's artifacts, not from memory of the study that made them.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from mlflow.exceptions import MlflowException

from pipeline.data import (
    DataError,
    ImageData,
    PreparedData,
    Split,
    load_study_data,
    prepare,
    resize_prepared,
    split_from_manifest,
)
from pipeline.models import build_model
from pipeline.spec import StudySpec, parse_spec
from pipeline.tracking import TAG_ROLE, TAG_TRIAL, Tracker

MODEL_FORMAT_VERSION = 1


class LoggedRunError(RuntimeError):
    """A run that cannot be read back: missing, not a trial, incomplete or from another version."""


@dataclass(frozen=True)
class LoggedTrial:
    """A finished trial as stored in MLflow."""

    run_id: str
    parent_run_id: str
    trial_number: int
    spec: StudySpec
    manifest: dict[str, Any]
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    evaluation: dict[str, Any]
    error_analysis: dict[str, Any] | None
    diagnosis: dict[str, Any] | None

    def build_model(self) -> torch.nn.Module:
        """Rebuild the trial's model and load its weights."""
        config = self.config
        model = build_model(config["arch"], config["in_channels"], config["num_classes"], config["image_size"],
                            config["knobs"], dropout=config["hyperparameters"].get("dropout", 0.0))
        model.load_state_dict(self.state_dict)
        return model.eval()

    def prepare(self, data: ImageData, split: Split, parts: tuple[str, ...]) -> PreparedData:
        """Normalize the parts with train statistics and resize them to the model's input size."""
        return resize_prepared(prepare(data, split, parts), self.config["image_size"])

    def load_data(self, spec: StudySpec | None = None) -> tuple[ImageData, Split]:
        """Load the images again and return them with the logged split.

        Raises:
            DataError: when the images differ from those the trial was trained on.
        """
        data, _, _ = load_study_data((spec or self.spec).data)
        split = split_from_manifest(self.manifest)
        if data.fingerprint != split.fingerprint:
            raise DataError(f"the images under the spec's data settings differ from those of run {self.run_id} "
                            f"(content hash {data.fingerprint[:12]}, logged {split.fingerprint[:12]}); "
                            "restore the data the study was run on")
        return data, split


def load_logged_trial(tracker: Tracker, run_id: str) -> LoggedTrial:
    """Download a trial run's artifacts and its parent's spec and split manifest.

    Raises:
        LoggedRunError: naming the run and what is missing or incompatible.
    """
    client = tracker.client
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise LoggedRunError(f"run {run_id} not found in {tracker.tracking_uri}; check the run id "
                             "and --tracking-uri") from None
    tags = run.data.tags
    if tags.get(TAG_ROLE) != "trial":
        raise LoggedRunError(f"run {run_id} is not a playbook trial run (tag {TAG_ROLE} is "
                             f"{tags.get(TAG_ROLE)!r}); pass the id of a trial-<N> run")
    if run.info.status != "FINISHED":
        raise LoggedRunError(f"run {run_id} ended {run.info.status}; only finished trials have weights to rerun")
    parent_run_id = tags["mlflow.parentRunId"]

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config = _read_json(client, run_id, "model/config.json", folder)
        if config.get("format_version") != MODEL_FORMAT_VERSION:
            raise LoggedRunError(f"run {run_id} stores model format {config.get('format_version')!r}, this "
                                 f"version of playbook reads format {MODEL_FORMAT_VERSION}; rerun it with the "
                                 f"playbook version that made it ({config.get('playbook_version', 'unknown')})")
        weights = _download(client, run_id, "model/state_dict.pt", folder)
        state_dict = torch.load(weights, map_location="cpu", weights_only=True)
        spec_text = _download(client, parent_run_id, "spec.yaml", folder).read_text(encoding="utf-8")
        return LoggedTrial(
            run_id=run_id,
            parent_run_id=parent_run_id,
            trial_number=int(tags[TAG_TRIAL]),
            spec=parse_spec(yaml.safe_load(spec_text), source=f"spec.yaml of run {parent_run_id}"),
            manifest=_read_json(client, parent_run_id, "split_manifest.json", folder),
            config=config,
            state_dict=state_dict,
            evaluation=_read_json(client, run_id, "evaluation.json", folder),
            error_analysis=_read_json(client, run_id, "error_analysis.json", folder, required=False),
            diagnosis=_read_json(client, run_id, "diagnosis.json", folder, required=False),
        )


def _download(client: Any, run_id: str, path: str, folder: Path) -> Path:
    try:
        return Path(client.download_artifacts(run_id, path, str(folder)))
    except (MlflowException, OSError) as error:
        raise LoggedRunError(f"run {run_id} has no artifact {path} ({type(error).__name__}); "
                             "it was not logged by a finished playbook trial, or its artifacts were deleted") from None


def _read_json(client: Any, run_id: str, path: str, folder: Path, required: bool = True) -> Any:
    try:
        return json.loads(_download(client, run_id, path, folder).read_text(encoding="utf-8"))
    except LoggedRunError:
        if required:
            raise
        return None
