"""`make bench`: optimise the demo model on this machine and measure what tfopt claims.

Against the local stack (`source .stack/stack.env` first; `make bench` does both):

    python -m bench.run [--retrain] [--threads 2] [--out-dir bench/out]

One run measures, on this machine: the speed-ups, top-1 and size of every variant vs tf:fp32
(`tfopt optimize`), the model's FLOPs against a matmul peak measured here, tfopt's harness vs
LiteRT's own benchmark tool, the same variants re-measured by a second run
(`airflow dags test optimize_model`), the pipeline's orchestration overhead and the DAG file's
parse time. Then, per real-size network (MobileNetV2 1.0 and ResNet50 at 224 px, `bench.peers`),
every tfopt variant beside the peers a user builds by hand, measured in the same interleaved
rounds, and the compute-bound network's FP32 and INT8 efficiency against FP32 and INT8 GEMM
peaks measured in the run (`bench.peak`, `bench.int8_peak`). Prints the tables; writes
bench/out/bench.json and bench/out/bench.png. `--quick` measures the real-size networks with
fewer images and rounds (a CI-size check). The raw measurements are saved first, in
bench/out/measured.json; `--report-only` rebuilds the report from them without measuring.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import figures, render
from bench.machine import LoadLog
from bench.orchestration import (
    REPO,
    BenchError,
    child_env,
    dag_parse_seconds,
    private_airflow_db,
    run_cli,
    run_dag,
    run_logged,
)
from tasks import storage
from tasks.hardware import describe_hardware, isa_label, isa_tier

logger = logging.getLogger("bench")

DEFAULT_DEMO_URI = "s3://{bucket}/bench/demo"
DEFAULT_MODEL_NAME = "tfopt-bench"
DAG_FILE = REPO / "dags" / "optimize_model.py"
HARNESS_ROUNDS = 24
REALSIZE_MODELS = ("mobilenet_v2", "resnet50")
REALSIZE_TIMEOUT_S = 40 * 60
ORCHESTRATION_MODEL = "mobilenet_v2"
"""The real-size network the pipeline runs end to end, by the CLI and by Airflow, for its
orchestration overhead (skipped with --quick)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    bucket = os.environ.get("TFOPT_BUCKET", "tfopt")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo-uri", default=DEFAULT_DEMO_URI.format(bucket=bucket))
    p.add_argument("--retrain", action="store_true", help="train the demo model even if published")
    p.add_argument("--registered-model-name", default=DEFAULT_MODEL_NAME)
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--out-dir", type=Path, default=REPO / "bench" / "out")
    p.add_argument(
        "--models",
        default=",".join(REALSIZE_MODELS),
        help=f"real-size networks, comma-separated (default {','.join(REALSIZE_MODELS)}; '' none)",
    )
    p.add_argument("--quick", action="store_true", help="fewer images and rounds per network")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild bench.json, the plot and the tables from the measurements "
        "the last run saved in OUT_DIR/measured.json",
    )
    return p.parse_args(argv)


def ensure_demo(demo_uri: str, retrain: bool, log_path: Path) -> dict[str, Any]:
    """The demo's URIs; trains and publishes it (`tfopt demo-data`) when absent or asked to."""
    uris = {
        "model_uri": f"{demo_uri}/model/model.keras",
        "eval_data_uri": f"{demo_uri}/eval",
        "calibration_data_uri": f"{demo_uri}/calibration",
    }
    parts = ("model", "eval", "calibration")
    if not retrain and all(storage.read_manifest(f"{demo_uri}/{p}") for p in parts):
        logger.info("reusing the demo published at %s (--retrain to train it again)", demo_uri)
        return {**uris, "trained": False}
    logger.info("training the demo model and publishing it at %s (about 2 minutes)", demo_uri)
    cmd = [str(Path(sys.executable).parent / "tfopt"), "demo-data", "--json"]
    stdout, wall = run_logged([*cmd, "--output-uri", demo_uri], log_path)
    info = json.loads(stdout)
    return {
        **uris,
        "trained": True,
        "train_wall_s": round(wall, 1),
        "held_out_top1": info.get("held_out_top1"),
    }


def run_json_module(
    module: str, *args: str, timeout: float = 900, log_path: Path | None = None
) -> dict[str, Any]:
    """Run `python -m <module> <args>` in a fresh process; its last stdout line as JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=timeout,
        cwd=REPO,
    )
    if log_path is not None:
        log_path.write_text(proc.stderr)
    if proc.returncode != 0:
        raise BenchError(f"python -m {module} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fetch_file(uri: str, dest: Path) -> Path:
    """Fetch a published tree (`uri` is the folder) and return the folder."""
    return Path(storage.fetch_tree(uri, dest))


def harness_vs_tool(run: dict[str, Any], threads: int, work: Path) -> list[dict]:
    """Per measured tflite variant: tfopt's harness vs LiteRT's tool, `HARNESS_ROUNDS` rounds.

    The rounds interleave the tool, the harness on the tool's own work (compiled as the tool
    compiles it, inputs written once) and the harness on the runner's full call in one fresh
    process (`bench.harness --rounds`), in turns of equal length, the order balanced, so the
    process's state and the machine's drift hit all three; the figures are medians of the
    per-round ratios,
    with their min and max. The pipeline's own p50 (measured minutes earlier) against the tool
    is reported beside them.
    """
    export_dir = fetch_file(f"{run['root_uri']}/export", work / "export")
    eval_uri = run["config"]["eval_data_uri"]
    out = []
    for row in run["variants"]:
        if not row["variant"].startswith("tflite:") or row["status"] != "OK":
            continue
        local = fetch_file(row["model_uri"], work / row["variant"].replace(":", "-"))
        rounds = run_json_module(
            "bench.harness",
            "tflite",
            str(local),
            str(export_dir),
            eval_uri,
            "--threads",
            str(threads),
            "--rounds",
            str(HARNESS_ROUNDS),
        )
        kept = [r for r in rounds if r["kept"]]
        tools = [r["tool_p50_ms"] for r in kept]
        tool_p50 = statistics.median(tools)
        out.append(
            {
                "variant": row["variant"],
                "ratio": statistics.median(r["ratio"] for r in kept),
                "ratio_range": [min(r["ratio"] for r in kept), max(r["ratio"] for r in kept)],
                "harness_p50_ms": statistics.median(r["harness_p50_ms"] for r in kept),
                "call_ratio": statistics.median(r["call_ratio"] for r in kept),
                "call_p50_ms": statistics.median(r["call_p50_ms"] for r in kept),
                "rounds_kept": len(kept),
                "tool_p50_ms": tool_p50,
                "tool_spread": (max(tools) - min(tools)) / tool_p50,
                "pipeline_p50_ms": row["p50_ms"],
                "pipeline_vs_tool": row["p50_ms"] / tool_p50,
                "rounds": rounds,
            }
        )
    return out


def repeatability(first: list[dict], second: list[dict]) -> list[dict[str, Any]]:
    """p50 at batch 1 of each variant in the second run divided by the first run's, beside the
    two runs' machine-speed probes (a probe ratio far from 1: the runs measured at different
    machine speeds) and, for the variant the first run registered as champion, the second run's
    p50 divided by that champion's p50 measured in the same rounds (`same_rounds_ratio`: the
    same model measured twice with the machine's drift taken out)."""
    again = {row["variant"]: row for row in second}
    out = []
    for row in first:
        other = again.get(row["variant"])
        if row["status"] != "OK" or not other or other["status"] != "OK":
            continue
        champion = other.get("champion_in_rounds") or {}
        same_rounds = (
            other["p50_ms"] / champion["p50_ms"]
            if champion.get("variant") == row["variant"] and champion.get("p50_ms")
            else None
        )
        out.append(
            {
                "variant": row["variant"],
                "p50_ms_run1": row["p50_ms"],
                "p50_ms_run2": other["p50_ms"],
                "ratio": other["p50_ms"] / row["p50_ms"],
                "same_rounds_ratio": same_rounds,
                "machine_probe_ms_run1": row.get("machine_probe_ms"),
                "machine_probe_ms_run2": other.get("machine_probe_ms"),
            }
        )
    return out


def conversion_costs(rows: list[dict[str, Any]], cli_stages: list[dict]) -> list[dict]:
    """Per variant: converter seconds, convert-stage seconds, calibration samples (INT8)."""
    stage_s = {s["label"].removesuffix(" convert"): s["seconds"] for s in cli_stages}
    out = []
    for row in rows:
        if row["status"] != "OK":
            continue
        manifest = storage.read_manifest(row["model_uri"])
        summary = (manifest.metadata["result"]["metrics"].get("summary") or {}) if manifest else {}
        out.append(
            {
                "variant": row["variant"],
                "conversion_s": row["conversion_s"],
                "convert_stage_s": stage_s.get(row["variant"]),
                "calibration_samples": summary.get("calibration_samples"),
            }
        )
    seconds = {c["variant"]: c["conversion_s"] for c in out}
    for cost in out:  # INT8 = FP32 conversion + calibration + quantisation
        if cost["variant"] == "tflite:int8" and seconds.get("tflite:fp32") is not None:
            cost["calibration_estimate_s"] = round(cost["conversion_s"] - seconds["tflite:fp32"], 2)
    return out


def measure(args: argparse.Namespace, load: LoadLog) -> dict[str, Any]:
    """Every measurement, in a fixed order, one at a time."""
    out, work = args.out_dir, args.out_dir / "work"
    with load.phase("demo"):
        demo = ensure_demo(args.demo_uri, args.retrain, out / "demo-data.log")
    params = {
        **{k: demo[k] for k in ("model_uri", "eval_data_uri", "calibration_data_uri")},
        "registered_model_name": args.registered_model_name,
        "batch_sizes": [1, 8],
        "num_threads": args.threads,
    }
    with load.phase("peak matmul (before)"):
        peak_before = run_json_module("bench.peak", "--threads", str(args.threads))
    with load.phase("tfopt optimize (CLI)"):
        cli = run_cli(params, out / "cli.log")
    with load.phase("airflow dags test"):
        dag = run_dag(params, out / "dag.log", private_airflow_db())
    with load.phase("LiteRT benchmark tool"):
        tool = harness_vs_tool(cli["results"], args.threads, work)
    with load.phase("FLOPs"):
        model_dir = fetch_file(demo["model_uri"].rsplit("/", 1)[0], work / "model")
        flops = run_json_module("bench.flops", str(model_dir / "model.keras"))
    with load.phase("DAG parse"):
        parse = dag_parse_seconds(DAG_FILE)
    with load.phase("peak matmul (after)"):
        peak_after = run_json_module("bench.peak", "--threads", str(args.threads))
    realsize = measure_realsize(args, load)
    return {
        "demo": demo,
        "params": params,
        "peak": {"before": peak_before, "after": peak_after},
        "cli": cli,
        "dag": dag,
        "tool": tool,
        "flops": flops,
        "parse": parse,
        **realsize,
    }


def measure_realsize(args: argparse.Namespace, load: LoadLog) -> dict[str, Any]:
    """The GEMM peaks, then each real-size network with its peers, each in a fresh process."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        return {"gemm_peak": None, "realsize": [], "realsize_orchestration": None}
    with load.phase("INT8/FP32 GEMM peaks (LiteRT)"):
        gemm = run_json_module("bench.int8_peak", "--threads", str(args.threads))
    results = []
    for model in models:
        extra = ["--quick"] if args.quick else []
        with load.phase(f"{model}: tfopt variants and peers"):
            results.append(
                run_json_module(
                    "bench.peers",
                    model,
                    "--threads",
                    str(args.threads),
                    *extra,
                    timeout=REALSIZE_TIMEOUT_S,
                    log_path=args.out_dir / f"peers-{model}.log",
                )
            )
    orchestration = None
    if not args.quick and ORCHESTRATION_MODEL in models:
        try:
            orchestration = orchestration_on_realsize(args, load)
        except Exception as exc:  # noqa: BLE001 - the networks' figures stand; the report says why
            logger.exception("the pipeline on %s failed", ORCHESTRATION_MODEL)
            orchestration = {"model": ORCHESTRATION_MODEL, "error": f"{type(exc).__name__}: {exc}"}
    return {"gemm_peak": gemm, "realsize": results, "realsize_orchestration": orchestration}


def orchestration_on_realsize(args: argparse.Namespace, load: LoadLog) -> dict[str, Any]:
    """`tfopt optimize` and `airflow dags test` on the real-size network, judged by fidelity."""
    root = args.demo_uri.rsplit("/", 1)[0] + f"/{ORCHESTRATION_MODEL}"
    with load.phase(f"{ORCHESTRATION_MODEL}: publish"):
        published = run_json_module(
            "bench.realsize_publish", ORCHESTRATION_MODEL, "--output-uri", root, "--if-missing"
        )
    params = {
        **{k: published[k] for k in ("model_uri", "eval_data_uri", "calibration_data_uri")},
        "registered_model_name": f"{args.registered_model_name}-{ORCHESTRATION_MODEL}",
        "batch_sizes": [1],
        "num_threads": args.threads,
        "metric": "fidelity",
        # Timed for its orchestration overhead, not judged: argmax agreement on random-init
        # logits is noise (bench.peers judges these networks by cosine), and a gate it cannot
        # meet would send NNCF's accuracy control reverting layer after layer for many minutes.
        "accuracy_tolerance": 1.0,
    }
    out = args.out_dir
    with load.phase(f"{ORCHESTRATION_MODEL}: tfopt optimize (CLI)"):
        cli = run_cli(params, out / f"cli-{ORCHESTRATION_MODEL}.log")
    with load.phase(f"{ORCHESTRATION_MODEL}: airflow dags test"):
        dag = run_dag(params, out / f"dag-{ORCHESTRATION_MODEL}.log", private_airflow_db())
    return {
        "model": ORCHESTRATION_MODEL,
        "params": params,
        "cli": figures.cost_figures(cli),
        "dag": figures.cost_figures(dag),
        "selected": cli["results"]["selection"]["chosen"],
        "selected_by_dag_run": dag["results"]["selection"]["chosen"],
    }


def assemble(m: dict[str, Any], load: LoadLog, started: float) -> dict[str, Any]:
    """The JSON document: machine, figures per variant, harness checks, costs, targets."""
    peak = max(m["peak"]["before"]["peak_gflops"], m["peak"]["after"]["peak_gflops"])
    rows = m["cli"]["results"]["variants"]
    bench: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_hardware(),
        "config": {**m["params"], "demo": m["demo"]},
        "selected": m["cli"]["results"]["selection"]["chosen"],
        "selected_by_dag_run": m["dag"]["results"]["selection"]["chosen"],
        "selection_reason": m["cli"]["results"]["selection"]["reason"],
        "flops": m["flops"],
        "peak": {"peak_gflops": peak, **m["peak"]},
        "variants": figures.all_variant_figures(rows, m["flops"]["flops"], peak),
        "harness_vs_tool": m["tool"],
        "repeatability": repeatability(rows, m["dag"]["results"]["variants"]),
        "conversion": conversion_costs(rows, m["cli"]["stages"]),
        "pipeline_cost": {
            "cli": figures.cost_figures(m["cli"]),
            "dag": figures.cost_figures(m["dag"]),
            "dag_parse": m["parse"],
        },
        "runs": {
            "cli": {k: m["cli"]["results"][k] for k in ("run_id", "root_uri")},
            "dag": {k: m["dag"]["results"][k] for k in ("run_id", "root_uri")},
        },
        "gemm_peak": m["gemm_peak"],
        "realsize_orchestration": m["realsize_orchestration"],
        "realsize": [
            {**r, "efficiency": figures.efficiency(r, peak, m["gemm_peak"])} for r in m["realsize"]
        ],
        "load": {"summary": load.summary(), "phases": load.phases},
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    bench["targets"] = [f.to_dict() for f in figures.target_figures(bench)]
    return bench


def print_report(bench: dict[str, Any], json_path: Path, png_path: Path) -> None:
    """The output layer: the tables and where the files are."""
    machine = bench["machine"]
    libraries = machine["libraries"]
    print(
        f"\nmachine: {machine['cpu_model']}, {machine['usable_cores']} cores "
        f"({isa_label(machine)}; tier {isa_tier(machine)}), {machine['memory_gib']} GiB; "
        f"TF {libraries['tensorflow']}, LiteRT {libraries['ai-edge-litert']}, "
        f"OpenVINO {libraries.get('openvino')}, NNCF {libraries.get('nncf')}"
    )
    print(f"load:    {bench['load']['summary']}")
    print(
        f"model:   {bench['flops']['model']}, {bench['flops']['flops'] / 1e6:.1f} MFLOP/image; "
        f"peak {bench['peak']['peak_gflops']:.0f} GFLOP/s FP32 on {bench['config']['num_threads']}"
        f" threads; selected {bench['selected']} (DAG run: {bench['selected_by_dag_run']})\n"
    )
    print(render.variants_table(bench))
    print(render.conversion_line(bench["conversion"]))
    print()
    print(render.cost_table(bench["pipeline_cost"]))
    print()
    for network in bench["realsize"]:
        print()
        print(render.peers_table(network))
    if bench["realsize_orchestration"] and "error" not in bench["realsize_orchestration"]:
        print()
        print(render.realsize_cost_table(bench["realsize_orchestration"]))
    print()
    print(render.targets_table([figures.Figure(**t) for t in bench["targets"]]))
    print(f"\nJSON: {json_path}\nplot: {png_path}\ntook: {bench['bench_wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    saved = args.out_dir / "measured.json"
    started, load = time.perf_counter(), LoadLog()
    if args.report_only:
        if not saved.exists():
            print(f"bench: {saved} does not exist; run the benchmark first", file=sys.stderr)
            return 2
        kept = json.loads(saved.read_text())
        measured, load.phases = kept["measured"], kept["phases"]
        started -= kept["wall_s"]
    else:
        try:
            measured = measure(args, load)
        except BenchError as exc:
            print(f"bench: failed: {exc}", file=sys.stderr)
            return 1
        # kept before the report is built, so a report error never costs the measurements
        document = {
            "measured": measured,
            "phases": load.phases,
            "wall_s": time.perf_counter() - started,
        }
        saved.write_text(json.dumps(document, default=str))
    bench = assemble(measured, load, started)
    json_path, png_path = args.out_dir / "bench.json", args.out_dir / "bench.png"
    json_path.write_text(json.dumps(bench, indent=2, default=str))
    render.write_plot(bench, png_path)
    print_report(bench, json_path, png_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
