"""Study specs: the YAML file a user writes, validated before anything runs.

Every field has a default except ``name``, so the smallest spec is one line.
Each validation error names the field, echoes the bad value and suggests a fix.
``load_spec`` collects all of them before raising, and creates nothing on disk.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline import models
from pipeline.params import Choice, Fixed, Param, check_bounds, describe, parse_param

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
# Metrics the evaluation stage reports, mapped to True where larger is better.
METRICS: dict[str, bool] = {
    "accuracy": True,
    "macro_f1": True,
    "macro_precision": True,
    "macro_recall": True,
    "latency_p50_ms": False,
    "latency_p95_ms": False,
    "param_count": False,
}
# Metrics also computed on dev after every epoch, which pruners can compare.
PER_EPOCH_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall")


class SpecError(ValueError):
    """A study spec that cannot run, with one line per problem."""

    def __init__(self, problems: list[str], source: str = "spec") -> None:
        self.problems = problems
        self.source = source
        super().__init__("\n".join(f"{source}: {line}" for line in problems))


class SpecModel(BaseModel):
    """Base for spec sections: frozen, and unknown keys are errors with a suggestion."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict) or cls.model_config.get("extra") != "forbid":
            return data
        allowed = list(cls.model_fields)
        for key in data:
            if key not in cls.model_fields:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(f"unknown key '{key}'; {hint}allowed keys: {', '.join(allowed)}")
        return data


def _param(kind: str, *, minimum: float | None = None, maximum: float | None = None,
           allowed: tuple[str, ...] | None = None) -> BeforeValidator:
    def validate(raw: Any) -> Param:
        return check_bounds(parse_param(raw, kind, allowed), minimum, maximum)  # type: ignore[arg-type]

    return BeforeValidator(validate)


FloatParam = Annotated[Param, _param("float")]
PositiveFloatParam = Annotated[Param, _param("float", minimum=0.0)]
DropoutParam = Annotated[Param, _param("float", minimum=0.0, maximum=0.95)]
BatchSizeParam = Annotated[Param, _param("int", minimum=2, maximum=65536)]
EpochsParam = Annotated[Param, _param("int", minimum=1, maximum=10000)]
OptimizerParam = Annotated[Param, _param("str", allowed=OPTIMIZERS)]
CropParam = Annotated[Param, _param("int", minimum=0, maximum=64)]
ScheduleParam = Annotated[Param, _param("str", allowed=SCHEDULES)]
ArchParam = Annotated[Param, _param("str", allowed=tuple(models.ARCHITECTURES))]


class Fractions(SpecModel):
    """Shares of the labelled images that go to each split; they must add up to 1."""

    train: float = Field(0.7, gt=0, lt=1)
    train_dev: float = Field(0.1, gt=0, lt=1)
    dev: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Fractions:
        total = self.train + self.train_dev + self.dev + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions add up to {total:.4g}, not 1 "
                f"(train={self.train}, train_dev={self.train_dev}, dev={self.dev}, "
                f"test={self.test}); change them so they sum to 1"
            )
        return self


Source = Literal["digits", "cifar10", "imagefolder", "fake"]


def _check_source_path(section: str, source: str, path: Path | None) -> None:
    if source in ("cifar10", "imagefolder") and path is None:
        raise ValueError(f"{section}.source '{source}' needs {section}.path, the folder of images")
    if source in ("digits", "fake") and path is not None:
        raise ValueError(f"{section}.source '{source}' takes no {section}.path; remove it")


class ShiftSpec(SpecModel):
    """A change applied once to dev and test images, to simulate another distribution."""

    brightness: float = Field(1.0, gt=0, le=4)  # pixel values are multiplied by this
    contrast: float = Field(1.0, gt=0, le=4)  # deviations from each image's mean are scaled by this
    rotate: float = Field(0.0, ge=-180, le=180)  # degrees, counter-clockwise


class DevTestSpec(SpecModel):
    """Where dev and test images come from when they differ from the training source."""

    source: Source | None = None  # None: the training images themselves, with the shift applied
    path: Path | None = None
    fake_size: int = Field(500, ge=20)
    fake_offset: int = Field(0, ge=0)
    shift: ShiftSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> DevTestSpec:
        if self.source is None:
            if self.path is not None:
                raise ValueError("data.dev_test.path needs data.dev_test.source; set the source too")
            if self.shift is None:
                raise ValueError("data.dev_test without a source or a shift would equal the training "
                                 "source; set dev_test.source, dev_test.shift, or remove dev_test")
        else:
            _check_source_path("data.dev_test", self.source, self.path)
        return self


class DataSpec(SpecModel):
    """Where the images come from and how they are split."""

    source: Source = "digits"
    path: Path | None = None
    image_size: int | None = Field(None, ge=4, le=1024)
    channels: Literal[1, 3] | None = None
    fractions: Fractions = Fractions()
    split_seed: int = 0
    fake_size: int = Field(500, ge=20)
    fake_classes: int = Field(10, ge=2)
    fake_offset: int = Field(0, ge=0)
    dev_test: DevTestSpec | None = None
    duplicates: Literal["error", "warn"] = "error"
    bad_files: Literal["error", "skip"] = "error"  # unreadable, empty or non-image files in a folder
    cache: bool = True  # keep decoded CIFAR-10 and ImageFolder images on disk, keyed by their content hash

    @model_validator(mode="after")
    def _check_path(self) -> DataSpec:
        _check_source_path("data", self.source, self.path)
        return self


class TrainSpec(SpecModel):
    """Optimization hyperparameters; each may be fixed or searched."""

    optimizer: OptimizerParam = Fixed("adam")
    lr: PositiveFloatParam = Fixed(1e-3)
    weight_decay: PositiveFloatParam = Fixed(0.0)
    momentum: Annotated[Param, _param("float", minimum=0.0, maximum=0.999)] = Fixed(0.9)
    batch_size: BatchSizeParam = Fixed(64)
    epochs: EpochsParam = Fixed(10)
    dropout: DropoutParam = Fixed(0.0)
    schedule: ScheduleParam = Fixed("cosine")
    augment_flip: bool = False
    augment_crop: CropParam = Fixed(0)

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: Param) -> Param:
        return check_bounds(value, 1e-12, 10.0)


class PretrainedSpec(SpecModel):
    """Where the transfer model's ImageNet weights come from; nothing is downloaded."""

    weights: Path | None = None  # None: torchvision's hub cache, if the file is there
    allow_random_init: bool = False  # train from random weights when no file is found


class ModelSpec(SpecModel):
    """The architecture and its knobs.

    ``arch`` names a registered architecture, or ``{choices: [...]}`` of several.
    Knobs sit under a key named after their architecture (``small_cnn: {depth: 3}``),
    so each architecture's knobs become Optuna parameters of their own.
    """

    model_config = ConfigDict(extra="allow", frozen=True, arbitrary_types_allowed=True)

    arch: ArchParam = Fixed("small_cnn")
    pretrained: PretrainedSpec = PretrainedSpec()

    @model_validator(mode="before")
    @classmethod
    def _parse_knobs(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        parsed = dict(data)
        for key, value in data.items():
            if key in ("arch", "pretrained"):
                continue
            if key not in models.ARCHITECTURES:
                close = difflib.get_close_matches(str(key), list(models.ARCHITECTURES), n=1)
                hint = f" did you mean '{close[0]}'?" if close else ""
                raise ValueError(
                    f"unknown key '{key}'; model takes 'arch', 'pretrained' and one block of knobs per "
                    f"architecture ({', '.join(models.ARCHITECTURES)}).{hint}"
                )
            parsed[key] = _parse_knob_block(key, value)
        return parsed

    @model_validator(mode="after")
    def _knobs_match_arch(self) -> ModelSpec:
        for key in self.model_extra or {}:
            if key not in self.arch_names:
                raise ValueError(
                    f"knobs given for '{key}', but model.arch is {describe(self.arch)}; "
                    f"add '{key}' to model.arch or remove the block"
                )
        return self

    @property
    def arch_names(self) -> tuple[str, ...]:
        if isinstance(self.arch, Choice):
            return tuple(str(name) for name in self.arch.choices)
        return (str(self.arch.value),)  # type: ignore[union-attr]

    def knobs(self, arch: str) -> dict[str, Param]:
        """Return every knob of ``arch``: the spec's values over the registry defaults."""
        given = (self.model_extra or {}).get(arch, {})
        defaults = {name: Fixed(knob.default) for name, knob in models.ARCHITECTURES[arch].knobs.items()}
        return {**defaults, **given}


def _parse_knob_block(arch: str, block: Any) -> dict[str, Param]:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ValueError(f"model.{arch} must be a mapping of knobs, got {block!r}")
    knobs = models.ARCHITECTURES[arch].knobs
    parsed: dict[str, Param] = {}
    for name, raw in block.items():
        if name not in knobs:
            raise ValueError(
                f"unknown knob '{name}' for model.{arch}; its knobs are {', '.join(knobs)}"
            )
        knob = knobs[name]
        try:
            parsed[name] = check_bounds(parse_param(raw, knob.kind, knob.allowed), knob.minimum, knob.maximum)
        except ValueError as error:
            raise ValueError(f"model.{arch}.{name}: {error}") from None
    return parsed


class Constraint(SpecModel):
    """A satisficing metric: the trial is feasible only if the metric stays within bounds."""

    metric: str
    max: float | None = None
    min: float | None = None

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric '{value}'; use one of {', '.join(METRICS)}")
        return value

    @model_validator(mode="after")
    def _one_bound(self) -> Constraint:
        if (self.max is None) == (self.min is None):
            raise ValueError(f"constraint on '{self.metric}' needs exactly one of 'max' or 'min'")
        return self

    def violation(self, value: float) -> float:
        """Return how far ``value`` breaks the bound; zero or less means satisfied."""
        if self.max is not None:
            return value - self.max
        return self.min - value  # type: ignore[operator]


class ObjectiveSpec(SpecModel):
    """One optimizing metric on dev and any number of satisficing constraints."""

    metric: str = "macro_f1"
    constraints: list[Constraint] = [Constraint(metric="latency_p95_ms", max=10.0)]

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric '{value}'; use one of {', '.join(METRICS)}")
        return value

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if METRICS[self.metric] else "minimize"


class SearchSpec(SpecModel):
    """How many trials to run, and with which sampler."""

    trials: int = Field(10, ge=1)
    sampler: Literal["random"] = "random"
    pruner: Literal["none", "median", "hyperband"] = "none"
    pruner_warmup_epochs: int = Field(2, ge=0)
    pruner_startup_trials: int = Field(5, ge=0)  # median pruner: trials that are never pruned
    timeout_s: float | None = Field(None, gt=0)
    heartbeat_interval_s: int = Field(10, ge=1)
    grace_period_s: int = Field(60, ge=2)

    @model_validator(mode="after")
    def _grace_exceeds_heartbeat(self) -> SearchSpec:
        if self.grace_period_s <= self.heartbeat_interval_s:
            raise ValueError(f"search.grace_period_s ({self.grace_period_s}) must exceed "
                             f"search.heartbeat_interval_s ({self.heartbeat_interval_s}), or live trials "
                             "would be failed as stale; raise grace_period_s")
        return self


class ComputeSpec(SpecModel):
    """How trials use the hardware; none of these change what is searched."""

    amp: bool = True  # bf16 autocast on CUDA (float16 with loss scaling without bf16); no effect on CPU
    channels_last: bool = True  # channels-last tensors on CUDA; no effect on CPU
    compile: bool = False  # torch.compile the model for training; compiling costs seconds per trial
    threads: int | None = Field(None, ge=1, le=1024)  # torch threads per worker; None: cores / workers


class LatencySpec(SpecModel):
    """How per-image inference latency is measured on dev images."""

    batch_size: int = Field(1, ge=1)
    warmup: int = Field(10, ge=0)
    repeats: int = Field(100, ge=5)


class BrightnessSettings(SpecModel):
    """Too dark / too bright: mean pixel value in [0, 1] below or above a cut-off."""

    dark_percentile: float = Field(5.0, ge=0, le=50)
    bright_percentile: float = Field(95.0, ge=50, le=100)
    dark: float | None = Field(None, ge=0, le=1)  # fixed cut-off; None takes the train percentile
    bright: float | None = Field(None, ge=0, le=1)


class PercentileSettings(SpecModel):
    """A statistic below a cut-off: a fixed value, or else a percentile of train images."""

    percentile: float = Field(5.0, ge=0, le=100)
    threshold: float | None = Field(None, ge=0)


class ConfidenceSettings(SpecModel):
    """A cut-off on the predicted class's softmax probability."""

    threshold: float = Field(gt=0, lt=1)


class ConfusedPairsSettings(SpecModel):
    """How many of the most-confused (true, predicted) pairs become categories."""

    count: int = Field(3, ge=1, le=100)


def _disabled_as_none(value: Any) -> Any:
    return None if value is False else value


class Categorizers(SpecModel):
    """Error categories to assign; set one to ``false`` (or null) to turn it off."""

    brightness: Annotated[BrightnessSettings | None, BeforeValidator(_disabled_as_none)] = BrightnessSettings()
    contrast: Annotated[PercentileSettings | None, BeforeValidator(_disabled_as_none)] = PercentileSettings()
    blur: Annotated[PercentileSettings | None, BeforeValidator(_disabled_as_none)] = PercentileSettings()
    low_confidence: Annotated[ConfidenceSettings | None, BeforeValidator(_disabled_as_none)] = (
        ConfidenceSettings(threshold=0.5))
    high_confidence: Annotated[ConfidenceSettings | None, BeforeValidator(_disabled_as_none)] = (
        ConfidenceSettings(threshold=0.9))
    confused_pairs: Annotated[ConfusedPairsSettings | None, BeforeValidator(_disabled_as_none)] = (
        ConfusedPairsSettings())


class ErrorAnalysisSpec(SpecModel):
    """Error categories, manual tags and the pictures of dev errors."""

    categorizers: Categorizers = Categorizers()
    manual_tags: Path | None = None  # CSV with columns index,tag
    grid_size: int = Field(36, ge=1, le=400)
    gallery_size: int = Field(16, ge=1, le=400)


class DiagnosisSpec(SpecModel):
    """Inputs to the bias / variance / data-mismatch diagnosis."""

    human_level_error: float | None = Field(None, ge=0, lt=1)
    min_gap: float = Field(0.01, ge=0, lt=1)


class StudySpec(SpecModel):
    """A whole study: data, model, training, objective and search."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    seed: int = 0
    language: Literal["en", "vi"] = "en"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute: ComputeSpec = ComputeSpec()
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    search: SearchSpec = SearchSpec()
    latency: LatencySpec = LatencySpec()
    error_analysis: ErrorAnalysisSpec = ErrorAnalysisSpec()
    diagnosis: DiagnosisSpec = DiagnosisSpec()

    @model_validator(mode="after")
    def _pruner_needs_epoch_metric(self) -> StudySpec:
        if self.search.pruner != "none" and self.objective.metric not in PER_EPOCH_METRICS:
            raise ValueError(
                f"search.pruner '{self.search.pruner}' compares the per-epoch dev metric, but "
                f"objective.metric '{self.objective.metric}' is measured once after training; "
                f"use one of {', '.join(PER_EPOCH_METRICS)} or set search.pruner: none"
            )
        return self


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a YAML spec; a relative ``data.path`` is taken from the spec's folder.

    Raises:
        SpecError: listing every problem, each with the field, the value and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"spec file not found: {path}; check the path"], source=str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SpecError([f"invalid YAML: {error}"], source=str(path)) from None
    if not isinstance(raw, dict):
        raise SpecError([f"a spec must be a mapping of keys, got {type(raw).__name__}"], source=str(path))
    return parse_spec(raw, base_dir=path.parent, source=str(path))


def parse_spec(raw: dict[str, Any], base_dir: Path | None = None, source: str = "spec") -> StudySpec:
    """Validate a spec given as a dict; see ``load_spec``."""
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(format_errors(error), source=source) from None
    if base_dir is not None:
        spec = _resolve_relative_paths(spec, base_dir)
    problems = _check_paths(spec)
    if problems:
        raise SpecError(problems, source=source)
    return spec


def _resolve_relative_paths(spec: StudySpec, base_dir: Path) -> StudySpec:
    """Take relative paths in the spec from the spec file's folder."""
    if spec.data.path is not None and not spec.data.path.is_absolute():
        data = spec.data.model_copy(update={"path": (base_dir / spec.data.path).resolve()})
        spec = spec.model_copy(update={"data": data})
    dev_test = spec.data.dev_test
    if dev_test is not None and dev_test.path is not None and not dev_test.path.is_absolute():
        dev_test = dev_test.model_copy(update={"path": (base_dir / dev_test.path).resolve()})
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"dev_test": dev_test})})
    weights = spec.model.pretrained.weights
    if weights is not None and not weights.is_absolute():
        pretrained = spec.model.pretrained.model_copy(update={"weights": (base_dir / weights).resolve()})
        spec = spec.model_copy(update={"model": spec.model.model_copy(update={"pretrained": pretrained})})
    tags = spec.error_analysis.manual_tags
    if tags is not None and not tags.is_absolute():
        analysis = spec.error_analysis.model_copy(update={"manual_tags": (base_dir / tags).resolve()})
        spec = spec.model_copy(update={"error_analysis": analysis})
    return spec


def _check_paths(spec: StudySpec) -> list[str]:
    problems = []
    tags = spec.error_analysis.manual_tags
    if tags is not None and not tags.is_file():
        problems.append(f"error_analysis.manual_tags: file not found: {tags}; give a CSV with columns index,tag")
    weights = spec.model.pretrained.weights
    if weights is not None and not weights.is_file():
        problems.append(f"model.pretrained.weights: file not found: {weights}; give the path of a saved "
                        "torchvision ResNet-18 state dict (resnet18-f37072fd.pth)")
    sections = [("data", spec.data.source, spec.data.path)]
    if spec.data.dev_test is not None:
        sections.append(("data.dev_test", spec.data.dev_test.source, spec.data.dev_test.path))
    for section, source, path in sections:
        if path is None:
            continue
        if not path.is_dir():
            problems.append(f"{section}.path: folder not found: {path}; point {section}.path at an existing folder")
        elif source == "cifar10" and not (path / "cifar-10-batches-py").is_dir():
            problems.append(
                f"{section}.path: {path / 'cifar-10-batches-py'} not found; unpack the CIFAR-10 "
                f"python archive (cifar-10-python.tar.gz) into {section}.path. Nothing is downloaded."
            )
    return problems


def format_errors(error: ValidationError) -> list[str]:
    """Turn pydantic's errors into 'field: problem (got value)' lines."""
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        if item["type"] == "missing":
            message = "required field is missing; add it"
            line = f"{field}: {message}"
        elif item["type"].startswith("value_error") or isinstance(value, dict):
            line = f"{field}: {message}"
        else:
            line = f"{field}: {message} (got {value!r})"
        lines.append(line)
    return lines


def spec_to_dict(spec: StudySpec) -> dict[str, Any]:
    """Return the spec as plain YAML-ready data, search dimensions written as in a spec."""
    return _plain(spec)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        data = {name: _plain(getattr(value, name)) for name in type(value).model_fields}
        data.update({name: _plain(extra) for name, extra in (value.model_extra or {}).items()})
        return data
    if isinstance(value, Fixed):
        return value.value
    if isinstance(value, Choice):
        return {"choices": list(value.choices)}
    if hasattr(value, "low"):
        data = {"low": value.low, "high": value.high, "log": value.log}
        if getattr(value, "step", 1) != 1:
            data["step"] = value.step
        return data
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
