"""Study report: one self-contained HTML page with pictures, also logged on the parent run.

Figures are matplotlib PNGs embedded as base64, so the file opens anywhere with no
network and no extra files. The page shows Optuna's optimization history and
parameter importances, the best trial's error breakdown and confusion matrix, and
tables of the best trials and the baselines.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from pipeline.diagnosis import Diagnosis, render  # noqa: E402
from pipeline.messages import text  # noqa: E402
from pipeline.spec import StudySpec  # noqa: E402
from pipeline.study import ATTR_BASELINE, ATTR_PARENT_RUN, StudyError, best_feasible_trial  # noqa: E402
from pipeline.tracking import Tracker, absolute_sqlite_uri  # noqa: E402

log = logging.getLogger(__name__)

TOP_TRIALS = 10


def write_report(spec: StudySpec, storage: str, tracking_uri: str, output: Path, lang: str = "en") -> Path:
    """Write the study's HTML report to ``output`` and log it on the parent run as ``report.html``."""
    try:
        study = optuna.load_study(study_name=spec.name, storage=absolute_sqlite_uri(storage))
    except KeyError:
        raise StudyError(f"study '{spec.name}' not found in {storage}; run 'playbook run' on the spec first") from None
    tracker = Tracker(tracking_uri, spec.name)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = best_feasible_trial(trials, spec.objective.direction)

    sections = [f"<h1>{_e(text('report.title', lang, study=spec.name))}</h1>",
                f"<p>{_e(_counts_line(trials, complete, lang))}</p>"]
    sections.append(_section(text("report.baseline", lang), _baseline_table(study.user_attrs.get(ATTR_BASELINE, {}))))
    sections.append(_section(text("report.best_trials", lang), _trials_table(complete, spec, lang)))
    sections.append(_section(text("report.history", lang), _history_figure(study, complete, spec)))
    sections.append(_section(text("report.importance", lang), _importance_figure(study, complete, lang)))
    if best is None:
        sections.append(f"<p>{_e(text('summary.no_feasible', lang))}</p>")
    else:
        sections += _best_trial_sections(tracker, best, lang)

    page = _page(text("report.title", lang, study=spec.name), "\n".join(sections), lang)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf-8")
    tracker.log_text(study.user_attrs[ATTR_PARENT_RUN], page, "report.html")
    return output


def _counts_line(trials: list, complete: list, lang: str) -> str:
    states = [t.state for t in trials]
    feasible = sum(1 for t in complete if t.user_attrs.get("feasible"))
    return text("summary.states", lang, complete=len(complete),
                pruned=states.count(optuna.trial.TrialState.PRUNED),
                failed=states.count(optuna.trial.TrialState.FAIL), feasible=feasible)


def _baseline_table(baseline: dict[str, dict[str, float]]) -> str:
    if not baseline:
        return "<p>-</p>"
    metrics = list(next(iter(baseline.values())))
    rows = [[name] + [f"{values[m]:.4f}" for m in metrics] for name, values in baseline.items()]
    return _table(["baseline"] + [f"dev {m}" for m in metrics], rows)


def _trials_table(complete: list, spec: StudySpec, lang: str) -> str:
    feasible = [t for t in complete if t.user_attrs.get("feasible")]
    reverse = spec.objective.direction == "maximize"
    ranked = sorted(feasible, key=lambda t: (t.value if reverse else -t.value), reverse=True)[:TOP_TRIALS]
    if not ranked:
        return f"<p>{_e(text('summary.no_feasible', lang))}</p>"
    names = sorted({name for t in ranked for name in t.params})
    header = ["#", f"dev {spec.objective.metric}", "dev accuracy", "p95 ms"] + names
    rows = []
    for t in ranked:
        metrics = t.user_attrs.get("dev_metrics", {})
        rows.append([str(t.number), f"{t.value:.4f}", f"{metrics.get('accuracy', float('nan')):.4f}",
                     f"{metrics.get('latency_p95_ms', float('nan')):.3f}"]
                    + [_format(t.params.get(name)) for name in names])
    return _table(header, rows)


def _history_figure(study: optuna.Study, complete: list, spec: StudySpec) -> str:
    if not complete:
        return "<p>-</p>"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        axes = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=f"dev {spec.objective.metric}")
    return _figure_html(axes.figure)


def _importance_figure(study: optuna.Study, complete: list, lang: str) -> str:
    searched = {name for t in complete for name in t.params}
    if len(complete) < 2 or not searched:
        return f"<p>{_e(text('report.importance_needs', lang))}</p>"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = optuna.visualization.matplotlib.plot_param_importances(study)
    except (RuntimeError, ValueError) as error:
        log.warning("parameter importances not computed: %s", error)
        return f"<p>{_e(text('report.importance_needs', lang))}</p>"
    return _figure_html(axes.figure)


def _best_trial_sections(tracker: Tracker, best: optuna.trial.FrozenTrial, lang: str) -> list[str]:
    run_id = best.user_attrs.get("mlflow_run_id")
    sections = [f"<h2>{_e(text('report.best_trial', lang, number=best.number))}</h2>",
                f"<p>MLflow run <code>{_e(str(run_id))}</code></p>",
                _table([text("report.param", lang), text("report.value", lang)],
                       [[k, _format(v)] for k, v in sorted(best.params.items())])]
    with tempfile.TemporaryDirectory() as scratch:
        analysis = _download_json(tracker, run_id, "error_analysis.json", scratch)
        if analysis is not None:
            sections.append(_section(text("errors.title", lang), _breakdown_figure(analysis, lang)))
        confusion = _download(tracker, run_id, "confusion_matrix.png", scratch)
        if confusion is not None:
            sections.append(_section(text("report.confusion", lang), _image_html(confusion.read_bytes())))
        grid = _download(tracker, run_id, "misclassified.png", scratch)
        if grid is not None:
            sections.append(_section(text("report.misclassified", lang), _image_html(grid.read_bytes())))
    diagnosis = best.user_attrs.get("diagnosis")
    if diagnosis:
        sections.append(_section(text("diagnosis.title", lang),
                                 f"<pre>{_e(render(Diagnosis.from_dict(diagnosis), lang))}</pre>"))
    return sections


def _breakdown_figure(analysis: dict[str, Any], lang: str) -> str:
    breakdown = analysis.get("breakdown", {})
    if not analysis.get("error_count"):
        return f"<p>{_e(text('report.no_errors', lang, dev_size=analysis.get('dev_size', '?')))}</p>"
    if not breakdown:
        return "<p>-</p>"
    names = sorted(breakdown, key=lambda name: -breakdown[name]["share_of_errors"])
    shares = [breakdown[name]["share_of_errors"] * 100 for name in names]
    figure, axes = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    axes.barh(names[::-1], shares[::-1], color="#4c72b0")
    axes.set_xlabel(text("report.share_axis", lang, count=analysis["error_count"]))
    figure.tight_layout()
    return _figure_html(figure)


def _download(tracker: Tracker, run_id: str | None, path: str, folder: str) -> Path | None:
    if run_id is None:
        return None
    try:
        return Path(tracker.client.download_artifacts(run_id, path, folder))
    except (MlflowException, OSError):
        log.warning("run %s has no artifact %s; the report leaves it out", run_id, path)
        return None


def _download_json(tracker: Tracker, run_id: str | None, path: str, folder: str) -> Any:
    downloaded = _download(tracker, run_id, path, folder)
    return None if downloaded is None else json.loads(downloaded.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------
# HTML


def _figure_html(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return _image_html(buffer.getvalue())


def _image_html(png: bytes) -> str:
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, content: str) -> str:
    return f"<h2>{_e(title)}</h2>\n{content}"


def _page(title: str, body: str, lang: str) -> str:
    return f"""<!doctype html>
<html lang="{lang}"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; display: block; overflow-x: auto; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
pre {{ background: #f7f7f7; padding: 0.8em; white-space: pre-wrap; }}
</style></head>
<body>
{body}
</body></html>
"""


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _e(value: str) -> str:
    return html.escape(value, quote=True)
