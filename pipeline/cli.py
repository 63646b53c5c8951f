"""Command line: ``playbook run SPEC`` and friends.

Results go to stdout and logs to stderr. Exit codes: 0 on success, 1 when a
study finished with no completed trial, 2 for bad input (spec, data or flags).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from pipeline import __version__

log = logging.getLogger("pipeline")

EXIT_OK, EXIT_NO_TRIAL, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playbook",
        description="Run Optuna studies of image classifiers from YAML specs, tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"playbook {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="log debug lines too, including libraries'")
    noise.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run", parents=[common], help="create or resume a study and run trials",
        description="Create the spec's study, or resume it, and run trials. Each trial trains, "
                    "evaluates on dev, analyzes errors and diagnoses bias / variance / data mismatch; "
                    "every trial is a child run under the study's parent run in MLflow.",
    )
    run.add_argument("spec", metavar="SPEC", help="path to the study's YAML spec")
    run.add_argument("--trials", type=_positive_int, metavar="N",
                     help="trials to add in this run (default: search.trials in the spec)")
    run.add_argument("--workers", type=_positive_int, default=1, metavar="K",
                     help="worker processes on this machine, splitting the trials and the CPU cores (default: 1)")
    run.add_argument("--seed", type=int, metavar="INT", help="seed of the sampler and of training (default: the spec's)")
    _add_locations(run)

    finalize = commands.add_parser(
        "finalize", parents=[common], help="score the best feasible trial on the test split, once",
        description="Evaluate the study's best feasible trial on the test split and log the test metrics "
                    "and the overfitting-to-dev gap on the study's parent run. Refuses to run a second "
                    "time unless --force is given.",
    )
    finalize.add_argument("spec", metavar="SPEC", help="path to the study's YAML spec")
    finalize.add_argument("--force", action="store_true", help="run the final test again; prints the earlier result first")
    _add_locations(finalize)

    rerun = commands.add_parser(
        "rerun", parents=[common], help="rerun one stage of a logged trial",
        description="Reload a trial's spec, split and weights from its MLflow run, rerun one stage, "
                    "log the result to a new run nested under the original, and print what changed.",
    )
    rerun.add_argument("run_id", metavar="RUN_ID", help="MLflow run id of a finished trial (a trial-<N> run)")
    rerun.add_argument("--stage", required=True, choices=("evaluate", "error-analysis", "diagnosis"),
                       help="the stage to rerun")
    rerun.add_argument("--spec", metavar="SPEC", dest="spec_path",
                       help="use this spec's settings instead of the logged one (its data must be the same)")
    _add_tracking_uri(rerun)

    report = commands.add_parser(
        "report", parents=[common], help="write the study's HTML report",
        description="Write a self-contained HTML report of the study (optimization history, parameter "
                    "importances, best trials, the best trial's errors and diagnosis, baselines) and log it "
                    "on the study's parent run.",
    )
    report.add_argument("spec", metavar="SPEC", help="path to the study's YAML spec")
    report.add_argument("--output", metavar="PATH", help="where to write the HTML (default: mlruns/reports/<study>.html)")
    _add_locations(report)

    reference = commands.add_parser(
        "spec-reference", parents=[common], help="print every spec field with its type, default and meaning",
        description="Print the study spec reference as a markdown table, read off the spec model.",
    )
    reference.add_argument("--lang", choices=("en", "vi"), default="en", help="language of the meanings (default: en)")
    return parser


def _add_locations(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///mlruns/optuna.db)")
    _add_tracking_uri(parser)
    parser.add_argument("--lang", choices=("en", "vi"),
                        help="language of the summary, diagnosis and report (default: the spec's)")


def _add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Send logs to stderr: INFO by default, DEBUG with -v, WARNING with -q."""
    # MLflow draws a progress bar per artifact download, which buries the log lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from pipeline.progress import Progress, ProgressHandler, install

    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    display = install(Progress(sys.stderr, live=sys.stderr.isatty() and not quiet))
    handler = ProgressHandler(display)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if not verbose else logging.DEBUG)
    log.setLevel(level)

    # MLflow sets its loggers' levels when imported, so import it before overriding them.
    import mlflow  # noqa: F401
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    # Optuna's own per-trial lines repeat ours without feasibility; keep its warnings.
    optuna.logging.set_verbosity(logging.DEBUG if verbose else logging.WARNING)
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore", module="mlflow")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        log.error("interrupted; finished trials are saved, and running the same command resumes the study")
        return 130
    except Exception as error:  # noqa: BLE001 - the command line's last resort
        from pipeline.data import DataError
        from pipeline.logged import LoggedRunError
        from pipeline.spec import SpecError
        from pipeline.study import StudyError
        from pipeline.tracking import TrackingError

        if args.debug:
            raise
        if isinstance(error, SpecError | DataError | StudyError | LoggedRunError | TrackingError):
            print(f"playbook: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"playbook: error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_NO_TRIAL


def _dispatch(args: argparse.Namespace) -> int:
    commands = {"run": _run, "finalize": _finalize, "rerun": _rerun, "report": _report,
                "spec-reference": _spec_reference}
    return commands[args.command](args)


def _run(args: argparse.Namespace) -> int:
    from pipeline.spec import load_spec
    from pipeline.study import run_study
    from pipeline.summary import render_summary

    spec = load_spec(args.spec)
    if args.seed is not None:
        spec = spec.model_copy(update={"seed": args.seed})
    lang = args.lang or spec.language
    outcome = run_study(spec, trials=args.trials, storage=args.storage,
                        tracking_uri=args.tracking_uri, lang=lang, workers=args.workers)
    print(render_summary(outcome, lang))
    return EXIT_OK if outcome.counts["COMPLETE"] > 0 else EXIT_NO_TRIAL


def _finalize(args: argparse.Namespace) -> int:
    from pipeline.finalize import AlreadyFinalized, finalize, render_final
    from pipeline.messages import text
    from pipeline.spec import load_spec
    from pipeline.study import default_storage
    from pipeline.tracking import default_tracking_uri

    spec = load_spec(args.spec)
    lang = args.lang or spec.language
    earlier: list[dict] = []
    try:
        result = finalize(spec, args.storage or default_storage(), args.tracking_uri or default_tracking_uri(),
                          force=args.force, earlier_out=earlier)
    except AlreadyFinalized as refused:
        print(text("final.earlier", lang))
        print(render_final(refused.earlier, lang))
        raise
    if earlier:
        print(text("final.earlier", lang))
        print(render_final(earlier[0], lang))
        print()
    print(render_final(result, lang))
    return EXIT_OK


def _rerun(args: argparse.Namespace) -> int:
    from pipeline.rerun import render_rerun, rerun_stage
    from pipeline.spec import load_spec
    from pipeline.tracking import default_tracking_uri

    spec = load_spec(args.spec_path) if args.spec_path else None
    result = rerun_stage(args.run_id, args.stage, args.tracking_uri or default_tracking_uri(), spec)
    print(render_rerun(result))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.report import write_report
    from pipeline.spec import load_spec
    from pipeline.study import default_storage
    from pipeline.tracking import DEFAULT_ROOT, default_tracking_uri

    spec = load_spec(args.spec)
    output = Path(args.output) if args.output else DEFAULT_ROOT / "reports" / f"{spec.name}.html"
    path = write_report(spec, args.storage or default_storage(), args.tracking_uri or default_tracking_uri(),
                        output, args.lang or spec.language)
    print(path)
    return EXIT_OK


def _spec_reference(args: argparse.Namespace) -> int:
    from pipeline.specdoc import render

    print(render(args.lang))
    return EXIT_OK
