"""Diagnosis stage: split the dev error into avoidable bias, variance and data mismatch.

With error rates e_human ≤ e_train ≤ e_train_dev ≤ e_dev ≤ e_test in the usual case:
avoidable bias = e_train − e_human, variance = e_train_dev − e_train,
data mismatch = e_dev − e_train_dev, and, once the final test has run,
overfitting to dev = e_test − e_dev. Gaps above ``min_gap`` are ranked, largest
first, and each maps to the catalogue's advice for it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.messages import text

GAPS = ("avoidable_bias", "variance", "data_mismatch", "dev_overfitting")


@dataclass(frozen=True)
class Diagnosis:
    """The error figures, the gaps between them and the ranked gaps worth acting on."""

    human_level_error: float
    human_level_assumed: bool  # True when the spec gave no human level, so 0 is used
    train_error: float
    train_dev_error: float
    dev_error: float
    avoidable_bias: float
    variance: float
    data_mismatch: float
    ranked: list[str]  # gap names above min_gap, largest first
    min_gap: float
    test_error: float | None = None
    dev_overfitting: float | None = None  # test error − dev error, once the final test has run
    noise: dict[str, float] | None = None  # two standard errors of each gap, where sizes are known

    @property
    def main_gap(self) -> str | None:
        return self.ranked[0] if self.ranked else None

    def gaps(self) -> dict[str, float]:
        """Return every gap that could be computed, by name."""
        return {name: getattr(self, name) for name in GAPS if getattr(self, name) is not None}

    def to_dict(self) -> dict:
        return {**asdict(self), "main_gap": self.main_gap}

    @classmethod
    def from_dict(cls, data: dict) -> Diagnosis:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def diagnose(train_error: float, train_dev_error: float, dev_error: float,
             human_level_error: float | None = None, min_gap: float = 0.01,
             test_error: float | None = None, sizes: dict[str, int] | None = None) -> Diagnosis:
    """Compute the gaps and rank those larger than ``min_gap``.

    Args:
        train_error: error on the train split, in eval mode, as a fraction.
        train_dev_error: error on train-dev (train distribution, not trained on).
        dev_error: error on dev.
        human_level_error: proxy for the optimal error; 0 when not given.
        min_gap: gaps at or below this are not worth a recommendation.
        test_error: error on test, known only after the final test.
        sizes: image counts of the splits (train, train_dev, dev, test). A gap must then
            also exceed two standard errors of the difference of its two error rates,
            so that sampling noise on a small dev set is not read as a problem.
    """
    human = 0.0 if human_level_error is None else human_level_error
    gaps = {
        "avoidable_bias": train_error - human,
        "variance": train_dev_error - train_error,
        "data_mismatch": dev_error - train_dev_error,
    }
    if test_error is not None:
        gaps["dev_overfitting"] = test_error - dev_error
    errors = {"human": human, "train": train_error, "train_dev": train_dev_error, "dev": dev_error,
              "test": test_error}
    pairs = {"avoidable_bias": ("train", "human"), "variance": ("train_dev", "train"),
             "data_mismatch": ("dev", "train_dev"), "dev_overfitting": ("test", "dev")}
    noise = None
    if sizes:
        noise = {name: _two_standard_errors(errors, sizes, *pairs[name]) for name in gaps}
    threshold = {name: max(min_gap, noise[name] if noise else 0.0) for name in gaps}
    # The tolerance keeps float noise (0.11 - 0.10 = 0.01000...09) from crossing the threshold.
    ranked = sorted((name for name, value in gaps.items() if value > threshold[name] + 1e-9),
                    key=lambda name: (-gaps[name], GAPS.index(name)))
    return Diagnosis(human, human_level_error is None, train_error, train_dev_error, dev_error,
                     ranked=ranked, min_gap=min_gap, test_error=test_error, noise=noise, **gaps)


def _two_standard_errors(errors: dict[str, float | None], sizes: dict[str, int], first: str, second: str) -> float:
    """Return twice the standard error of errors[first] − errors[second] (binomial, independent sets)."""
    variance = 0.0
    for split in (first, second):
        if split == "human" or split not in sizes or sizes[split] <= 0:
            continue
        rate = errors[split]
        variance += rate * (1.0 - rate) / sizes[split]
    return 2.0 * variance ** 0.5


def render(diagnosis: Diagnosis, lang: str = "en") -> str:
    """Write the diagnosis and its recommendations as text in ``lang``."""
    pct = _percent
    lines = [text("diagnosis.title", lang)]
    lines.append(text("diagnosis.errors", lang, human=pct(diagnosis.human_level_error),
                      train=pct(diagnosis.train_error), train_dev=pct(diagnosis.train_dev_error),
                      dev=pct(diagnosis.dev_error)))
    if diagnosis.human_level_assumed:
        lines.append("  (" + text("diagnosis.human_assumed", lang) + ")")
    gaps = diagnosis.gaps()
    lines.append(text("diagnosis.gaps", lang, **{name: pct(gaps[name]) for name in GAPS[:3]}))
    if diagnosis.test_error is not None:
        lines.append(text("diagnosis.test", lang, test=pct(diagnosis.test_error),
                          dev_overfitting=pct(gaps["dev_overfitting"])))
    if diagnosis.avoidable_bias < 0 and not diagnosis.human_level_assumed:
        lines.append(text("diagnosis.better_than_human", lang, value=pct(-diagnosis.avoidable_bias)))
    if diagnosis.main_gap is None:
        lines.append(text("diagnosis.none", lang, threshold=pct(diagnosis.min_gap)))
        return "\n".join(lines)
    lines.append(text("diagnosis.main", lang, gap=text(f"diagnosis.gap.{diagnosis.main_gap}", lang),
                      value=pct(getattr(diagnosis, diagnosis.main_gap))))
    for rank, name in enumerate(diagnosis.ranked, start=1):
        lines.append(f"  {rank}. " + text(f"advice.{name}", lang))
    return "\n".join(lines)


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"
