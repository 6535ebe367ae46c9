"""The `tfopt` command line: `optimize` runs the whole chain without Airflow."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from tasks.config import AUTO_METRIC, DEFAULT_VARIANTS, METRIC_NAMES, OBJECTIVES
from tasks.errors import TfoptError, UserInputError

logger = logging.getLogger("tfopt")

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


def _optimize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="optimise a model: export, convert, validate, benchmark, select, register",
        description="Run the whole tfopt chain in this process against S3 and MLflow.",
    )
    p.add_argument("--model-uri", required=True, help="S3 or local URI of a .keras or SavedModel")
    p.add_argument(
        "--eval-data-uri",
        required=True,
        help="folder of .npz shards: the model's inputs plus the metric's ground truth",
    )
    p.add_argument(
        "--calibration-data-uri",
        default=None,
        help="folder of .npz shards for INT8 calibration (default: a seeded slice of the eval "
        "data is held out; not needed without int8 variants)",
    )
    p.add_argument("--registered-model-name", required=True, help="MLflow registered model")
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated backend:precision list (default: all; tf:fp32 is always added)",
    )
    p.add_argument(
        "--accuracy-tolerance",
        type=float,
        default=0.01,
        help="how far the metric may move vs the baseline: an absolute drop for top1/top5/"
        "multilabel_map/miou/map50/map/fidelity (0.01 = 1 point), a relative rise of the error "
        "for mae/rmse "
        "(0.05 = 5%%); default 0.01",
    )
    p.add_argument(
        "--metric",
        choices=METRIC_NAMES,
        default=AUTO_METRIC,
        help="task metric (default auto: top1 for integer class ids, multilabel_map for "
        "multi-hot rows, miou for a class per pixel/token, mae for float labels, map50 for "
        "gt_boxes, fidelity without ground truth)",
    )
    p.add_argument(
        "--metric-output",
        default=None,
        help="the model output the metric reads (detection: boxes=...,scores=...,classes=...); "
        "default: the only output, else the one that fits",
    )
    p.add_argument("--latency-slo-ms", type=float, default=None, help="p99 budget at batch 1")
    p.add_argument("--batch-sizes", default="1,8", help="batch sizes to benchmark (default 1,8)")
    p.add_argument("--objective", choices=OBJECTIVES, default="latency")
    p.add_argument("--num-threads", type=int, default=2, help="CPU threads per runtime")
    p.add_argument("--run-id", default=None, help="reuse a run id (a retry resumes that run)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="train a demo model and publish it with eval + calibration shards",
        description="Generate a procedural shapes data set, train a demo model on it, publish.",
    )
    p.add_argument(
        "--task",
        choices=("classification", "detection"),
        default="classification",
        help="classification (default; s3://$TFOPT_BUCKET/demo) or detection "
        "(JPEG-bytes detector; s3://$TFOPT_BUCKET/demo/detection)",
    )
    p.add_argument(
        "--output-uri",
        default=None,
        help="where to publish (default s3://$TFOPT_BUCKET/demo, + /detection for detection)",
    )
    p.add_argument("--tiny", action="store_true", help="a tiny, fast model (for tests)")
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when a demo model is already published there",
    )
    p.add_argument(
        "--encoding",
        choices=("jpeg", "base64"),
        default="jpeg",
        help="detection: the serving input holds JPEG bytes or web-safe base64 of them",
    )
    p.add_argument(
        "--no-calibration",
        dest="calibration",
        action="store_false",
        help="detection: publish no calibration shards (tfopt then holds out eval data)",
    )
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")


def _show_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="print the variant table and registration of a published run",
        description="Print a run's report: the latest of a registered model, or --run-id.",
    )
    p.add_argument("--registered-model-name", required=True)
    p.add_argument("--run-id", default=None, help="a run id (default: the latest run)")
    p.add_argument("--json", action="store_true", help="print results.json as it is")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfopt", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _optimize_parser(sub)
    _demo_parser(sub)
    _show_parser(sub)
    return parser


def _progress(step: int, total: int, label: str, result: Any, seconds: float | None) -> None:
    if seconds is None:
        print(f"[{step:>2}/{total}] {label} ...", file=sys.stderr, flush=True)
        return
    status = result.status.value if result is not None else "done"
    reason = f" - {result.reason}" if getattr(result, "reason", "") else ""
    print(
        f"[{step:>2}/{total}] {label}: {status} ({seconds:.1f} s){reason}",
        file=sys.stderr,
        flush=True,
    )


def _print_report(results: dict[str, Any], report_uri: str) -> None:
    """Print a published results.json: the table, the choice, the version, where to look."""
    from tasks.report import render_table_text
    from tasks.summary import RESULTS_FORMAT_VERSION, VariantSummary

    if results.get("format_version") != RESULTS_FORMAT_VERSION:
        raise UserInputError(
            f"{report_uri}/results.json was published by an older tfopt (format "
            f"{results.get('format_version', 1)}); rerun the optimisation to get a current report"
        )
    run, selection = results["run"], results["selection"]
    reg = results.get("registration") or {}
    summaries = [VariantSummary.from_dict(row) for row in results["variants"]]
    print(render_table_text(summaries, run))
    print()
    print(f"chosen:     {selection['chosen']} — {selection.get('reason', '')}")
    print(
        f"registered: {reg.get('registered_model_name')} version {reg.get('model_version')} "
        f"({'champion' if reg.get('champion') else 'challenger'}: {reg.get('champion_reason')})"
    )
    print(
        f"load it:    mlflow.pyfunc.load_model('models:/{reg.get('registered_model_name')}"
        "@champion')"
    )
    print(f"MLflow:     {reg.get('mlflow_run_url')}")
    print(f"            {reg.get('model_version_url')}")
    print(f"report:     {report_uri}/report.html")


def _run_optimize(args: argparse.Namespace) -> int:
    from tasks.config import PipelineConfig
    from tasks.pipeline import optimize
    from tasks.storage import get_json

    config = PipelineConfig.from_params(
        {
            "model_uri": args.model_uri,
            "eval_data_uri": args.eval_data_uri,
            "calibration_data_uri": args.calibration_data_uri,
            "registered_model_name": args.registered_model_name,
            "variants": args.variants,
            "accuracy_tolerance": args.accuracy_tolerance,
            "latency_slo_ms": args.latency_slo_ms,
            "batch_sizes": args.batch_sizes,
            "objective": args.objective,
            "num_threads": args.num_threads,
            "metric": args.metric,
            "metric_output": args.metric_output,
        }
    )
    results = optimize(config, run_id=args.run_id, progress=_progress)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
        return 0
    report_uri = results["report"]["uris"]["report_uri"]
    _print_report(get_json(f"{report_uri}/results.json"), report_uri)
    print(f"S3:         {results['root_uri']}/")
    print(f"wall time:  {results['wall_s']:.1f} s")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    from tasks.runs import list_runs

    runs = list_runs(args.registered_model_name, limit=10_000)
    if args.run_id:
        from tasks.config import run_key

        runs = [run for run in runs if run.run_id in (args.run_id, run_key(args.run_id))]
    if not runs:
        raise UserInputError(
            f"no published run of {args.registered_model_name!r}"
            + (f" with run id {args.run_id!r}" if args.run_id else "")
        )
    results = runs[0].results()
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        _print_report(results, runs[0].report_uri())
    return 0


def _optimize_command(result: dict[str, Any]) -> str:
    """The `tfopt optimize` command line for a published demo."""
    parts = [
        "tfopt optimize",
        f"--model-uri {result['model_uri']}",
        f"--eval-data-uri {result['eval_data_uri']}",
    ]
    if result.get("calibration_data_uri"):
        parts.append(f"--calibration-data-uri {result['calibration_data_uri']}")
    parts.append(f"--registered-model-name {result['registered_model_name']}")
    parts.append(f"--metric {result['metric']}")
    return " \\\n    ".join(parts)


def _run_demo_data(args: argparse.Namespace) -> int:
    from tasks.demo.publish import demo_root, publish_demo
    from tasks.storage import read_manifest

    bucket = os.environ.get("TFOPT_BUCKET", "tfopt")
    base = args.output_uri or demo_root(f"s3://{bucket}/demo", args.task)
    output_uri = base.rstrip("/")
    if args.if_missing and read_manifest(f"{output_uri}/model") is not None:
        print(f"demo already published at {output_uri}", file=sys.stderr)
        return 0
    result = publish_demo(
        output_uri,
        tiny=args.tiny,
        seed=args.seed,
        task=args.task,
        encoding=args.encoding,
        calibration=args.calibration,
    )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    for key in ("model_uri", "eval_data_uri", "calibration_data_uri"):
        if result[key]:
            print(f"{key}: {result[key]}")
    if args.task == "detection":
        print(
            f"held-out mAP@0.5: {result['map50']:.4f}, mAP@[.5:.95]: {result['map']:.4f} "
            f"(trained in {result['train_s']:.0f} s)"
        )
    else:
        top1 = result["held_out_top1"]
        print(f"held-out top-1: {top1:.2%} (trained in {result['train_s']:.0f} s)")
    print(f"optimise it:\n  {_optimize_command(result)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tfopt` console script."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "urllib3", "absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        commands = {"optimize": _run_optimize, "demo-data": _run_demo_data, "show": _run_show}
        return commands[args.command](args)
    except UserInputError as exc:
        print(f"tfopt: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TfoptError as exc:
        print(f"tfopt: failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
