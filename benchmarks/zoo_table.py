"""Tabulate a finished architecture-zoo study: the best trial of each architecture.

Reads the study's trials from MLflow and writes a markdown table with dev accuracy,
parameters, FLOPs per image, p95 latency and training time per architecture,
with the machine and library versions it ran on.

    playbook run studies/cifar10_zoo.yaml
    python benchmarks/zoo_table.py --study cifar10_zoo --output docs/ZOO.md
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import mlflow
import optuna
import torch
from mlflow.tracking import MlflowClient

from pipeline.tracking import absolute_sqlite_uri, default_tracking_uri


def best_per_architecture(client: MlflowClient, study_name: str) -> dict[str, dict]:
    """Return the complete trial with the highest dev accuracy for each architecture."""
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment named '{study_name}'; run the study first")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string="tags.`playbook.trial_state` = 'COMPLETE'", max_results=1000)
    best: dict[str, dict] = {}
    for run in runs:
        arch = run.data.params["arch"]
        row = {"run": run, "accuracy": run.data.metrics["dev_accuracy"], "trials": 1}
        if arch in best:
            row["trials"] += best[arch]["trials"]
            if best[arch]["accuracy"] >= row["accuracy"]:
                best[arch]["trials"] = row["trials"]
                continue
        best[arch] = row
    return best


def render(best: dict[str, dict], study_name: str, tracking_uri: str) -> str:
    lines = [
        f"# Architecture zoo on CIFAR-10 images (study `{study_name}`)",
        "",
        "Best complete trial of each architecture by dev accuracy. Command:",
        "",
        "```bash",
        "playbook run studies/cifar10_zoo.yaml",
        f"python benchmarks/zoo_table.py --study {study_name} --output docs/ZOO.md",
        "```",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}, "
        f"mlflow {mlflow.__version__}. Tracking store: `{tracking_uri}`.",
        "",
        "| architecture | trials | dev accuracy | dev macro F1 | parameters | MFLOPs / image | input px "
        "| p95 latency ms | training s | knobs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arch in sorted(best, key=lambda name: -best[name]["accuracy"]):
        run = best[arch]["run"]
        metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
        knobs = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(params.items()) if k.startswith(arch + "."))
        if "playbook.pretrained" in tags:
            knobs += f", pretrained={tags['playbook.pretrained'].lower()}"
        lines.append(
            f"| {arch} | {best[arch]['trials']} | {metrics['dev_accuracy']:.4f} | {metrics['dev_macro_f1']:.4f} "
            f"| {int(metrics['param_count']):,} | {metrics['flops_per_image'] / 1e6:.1f} "
            f"| {int(metrics['input_resolution'])} | {metrics['latency_p95_ms']:.2f} "
            f"| {metrics['train_seconds']:.0f} | {knobs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="cifar10_zoo", help="study name (default: cifar10_zoo)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: ./mlruns)")
    parser.add_argument("--output", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    tracking_uri = args.tracking_uri or default_tracking_uri()
    table = render(best_per_architecture(MlflowClient(absolute_sqlite_uri(tracking_uri)), args.study),
                   args.study, tracking_uri)
    print(table)
    if args.output:
        args.output.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
