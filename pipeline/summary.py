"""The table printed at the end of ``playbook run``, in English or Vietnamese."""

from __future__ import annotations

from pipeline.diagnosis import Diagnosis, render
from pipeline.messages import text
from pipeline.study import StudyOutcome

SHOWN_METRICS = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "latency_p95_ms")


def mlflow_ui_command(tracking_uri: str) -> str:
    """Return the command that opens the MLflow UI on this study's runs."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def render_summary(outcome: StudyOutcome, lang: str = "en") -> str:
    """Write trial counts, the best feasible trial against the baseline, and the UI command."""
    counts = outcome.counts
    lines = [
        text("summary.title", lang, study=outcome.study_name, total=len(outcome.trials), new=outcome.new_trials),
        "  " + text("summary.states", lang, complete=counts["COMPLETE"], pruned=counts["PRUNED"],
                    failed=counts["FAIL"], feasible=counts["feasible"]),
        "  " + text("summary.objective", lang, metric=outcome.metric,
                    direction=text(f"summary.{outcome.direction}", lang),
                    constraints=", ".join(outcome.constraints) or text("summary.no_constraints", lang)),
        "",
    ]
    best = outcome.best
    if best is None:
        key = "summary.no_complete" if counts["COMPLETE"] == 0 else "summary.no_feasible"
        lines.append(text(key, lang))
    else:
        lines.append(text("summary.best", lang, number=best.number, run_id=best.run_id))
        lines.append(f"  {text('summary.params', lang)}:")
        width = max(len(name) for name in best.params) if best.params else 0
        for name, value in sorted(best.params.items()):
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"    {name:<{width}}  {shown}")
        lines.append("")
        lines += _metric_table(outcome, lang)
        if best.diagnosis:
            lines += ["", render(Diagnosis.from_dict(best.diagnosis), lang)]
    lines += ["", text("summary.mlflow_ui", lang), f"  {mlflow_ui_command(outcome.tracking_uri)}"]
    return "\n".join(lines)


def _metric_table(outcome: StudyOutcome, lang: str) -> list[str]:
    columns = [text("summary.best_column", lang), text("summary.majority", lang), text("summary.linear", lang)]
    sources = [outcome.best.dev_metrics, outcome.baseline.get("majority", {}),
               outcome.baseline.get("mean_colour_linear", {})]
    header = f"  {text('summary.metric', lang):<16}" + "".join(f"{c:>22}" for c in columns)
    rows = [header]
    for metric in SHOWN_METRICS:
        cells = []
        for source in sources:
            value = source.get(metric)
            cells.append(f"{value:>22.4f}" if value is not None else f"{'-':>22}")
        rows.append(f"  {metric:<16}" + "".join(cells))
    return rows
