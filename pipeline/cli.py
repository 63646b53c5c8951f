"""Command line: ``playbook run SPEC`` and friends.

Results go to stdout and logs to stderr. Exit codes: 0 on success, 1 when a
study finished with no completed trial, 2 for bad input (spec, data or flags).
"""

from __future__ import annotations

import argparse
import logging
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
    run.add_argument("--storage", metavar="URL",
                     help="Optuna storage URL (default: sqlite:///mlruns/optuna.db)")
    run.add_argument("--tracking-uri", metavar="URI",
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    run.add_argument("--seed", type=int, metavar="INT", help="seed of the sampler and of training (default: the spec's)")
    run.add_argument("--lang", choices=("en", "vi"), help="language of the summary and diagnosis (default: the spec's)")
    return parser


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Send logs to stderr: INFO by default, DEBUG with -v, WARNING with -q."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
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
        from pipeline.spec import SpecError
        from pipeline.study import StudyError

        if args.debug:
            raise
        if isinstance(error, SpecError | DataError | StudyError):
            print(f"playbook: error: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"playbook: error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_NO_TRIAL


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    raise AssertionError(f"unhandled command {args.command}")


def _run(args: argparse.Namespace) -> int:
    from pipeline.spec import load_spec
    from pipeline.study import run_study
    from pipeline.summary import render_summary

    spec = load_spec(args.spec)
    if args.seed is not None:
        spec = spec.model_copy(update={"seed": args.seed})
    lang = args.lang or spec.language
    outcome = run_study(spec, trials=args.trials, storage=args.storage,
                        tracking_uri=args.tracking_uri, lang=lang)
    print(render_summary(outcome, lang))
    return EXIT_OK if outcome.counts["COMPLETE"] > 0 else EXIT_NO_TRIAL
