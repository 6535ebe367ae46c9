"""One real-size network: every tfopt variant beside the peers, judged and measured in one process.

    python -m bench.peers mobilenet_v2 --threads 2 --work-dir DIR [--quick]   # JSON on stdout

Builds the network (`bench.realsize`), exports it as tfopt does, then builds every CPU variant
with tfopt's own backends (the same `ConversionRequest` the pipeline sends, with the calibration
images and, for backends that use it, tfopt's metric on a validation slice) and the peers a user
would build by hand (`bench.peer_runners`). All of them are judged by the fidelity metric against
TF as exported, on the same eval images, and measured in one interleaved benchmark (rounds,
order balanced, spoiled rounds left out) on the same inputs and threads. tfopt's choice and the
best passing peer then meet head to head, the two alone in many short rounds, for the headline
ratio.

The gate: the fidelity metric's mean cosine similarity to TF's logits may drop at most
`GATE_COSINE_DROP` below TF's own (1.0). Argmax agreement and the max error are reported beside.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import peer_runners, realsize
from bench.int8_peak import gemm_runners

logger = logging.getLogger("bench.peers")

BASELINE = "tf:fp32"
GATE_COSINE_DROP = 0.01
FULL = {
    "eval": 32,
    "calibration": 64,
    "batchnorm": 32,
    "rounds": 7,
    "round_seconds": 1.0,
    "duel_rounds": 30,
}
QUICK = {
    "eval": 8,
    "calibration": 16,
    "batchnorm": 8,
    "rounds": 3,
    "round_seconds": 0.3,
    "duel_rounds": 6,
}
DUEL_ROUND_SECONDS = 0.3
MEASURED_FEEDS = 16


def tfopt_variants() -> list[str]:
    """Every variant tfopt knows, baseline first; those this worker cannot run end SKIPPED."""
    from tasks.config import KNOWN_VARIANTS

    return [BASELINE, *(v for v in KNOWN_VARIANTS if v != BASELINE)]


def fidelity(runner: Callable, feeds: Sequence[dict], reference: Sequence[dict]) -> dict:
    """tfopt's fidelity metric of `runner` against the reference outputs, sample by sample."""
    return fidelity_of([runner(feed) for feed in feeds], reference)


def fidelity_of(outputs: Sequence[dict], reference: Sequence[dict]) -> dict:
    """tfopt's fidelity metric of a runner's outputs against the reference, sample by sample."""
    from tasks.metrics.fidelity import FidelityAccumulator

    accumulator = FidelityAccumulator("fidelity", tuple(reference[0]))
    for got, expected in zip(outputs, reference, strict=True):
        accumulator.update(got, {}, expected)
    value = accumulator.value()
    return {key: round(float(v), 6) for key, v in value.details.items()}


def outputs_digest(outputs: Sequence[dict]) -> str:
    """SHA-256 of a runner's outputs, every sample and output in order: two runners with the
    same digest computed the same numbers, bit for bit."""
    digest = hashlib.sha256()
    for sample in outputs:
        for name in sorted(sample):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(sample[name]).tobytes())
    return digest.hexdigest()


def accuracy_validation(feeds: Sequence[dict], reference: Sequence[dict]) -> Any:
    """The gate's metric on the eval images, as the convert stage hands it to INT8 quantizers
    that repair accuracy (NNCF's accuracy control keeps the costly layers in FP32)."""
    from tasks.backends.base import AccuracyValidation

    def cosine(runner: Any, indices: Sequence[int] | None) -> float:
        chosen = range(len(feeds)) if indices is None else indices
        return fidelity(runner, [feeds[i] for i in chosen], [reference[i] for i in chosen])[
            "cosine"
        ]

    return AccuracyValidation(samples=list(feeds), metric=cosine, higher_is_better=True)


def build_tfopt(
    variant: str, saved_model: Path, work: Path, threads: int, data: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Convert and load one tfopt variant with its backend; (runner or None, what happened)."""
    from tasks.backends import BackendUnavailableError, ConversionRequest, get_backend

    backend_name, precision = variant.split(":")
    backend = get_backend(backend_name)
    reason = backend.available()
    if reason:
        return None, {"status": "SKIPPED", "reason": reason}
    request = ConversionRequest(
        saved_model_dir=saved_model,
        signature=data["signature"],
        precision=precision,
        output_dir=work / variant.replace(":", "-"),
        calibration_data=lambda: iter(data["calibration_feeds"]),
        batch_sizes=(1,),
        validation=data.get("validation") if precision == "int8" else None,
        accuracy_tolerance=GATE_COSINE_DROP,
        objective="latency",
    )
    try:
        conversion = backend.convert(request)
        runner = backend.load(conversion.artifact_dir, data["signature"], threads)
    except BackendUnavailableError as exc:
        return None, {"status": "SKIPPED", "reason": exc.reason}
    except Exception as exc:  # noqa: BLE001 - a variant that fails is reported, the rest go on
        logger.exception("%s failed", variant)
        return None, {"status": "FAILED", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    summary = conversion.summary
    return runner, {
        "status": "OK",
        "conversion_s": summary.get("conversion_seconds") or summary.get("seconds"),
        "size_bytes": summary.get("size_bytes"),
    }


def build_peers(saved_model: Path, threads: int, data: dict[str, Any]) -> dict[str, tuple]:
    """The peers, name -> (runner, info); a peer that fails is reported with its reason."""
    names = (data["signature"].input_names[0], data["signature"].output_names[0])
    calibration = [feed[names[0]] for feed in data["calibration_feeds"]]
    makers = {
        "peer:openvino-default": lambda: peer_runners.stock_openvino(saved_model, threads, names),
        "peer:nncf-int8-default": lambda: peer_runners.stock_openvino(
            saved_model, threads, names, calibration, converted=converted.get("model")
        ),
        "peer:litert-default": lambda: peer_runners.stock_litert(saved_model, threads, names),
        "peer:litert-dynamic-range": lambda: peer_runners.stock_litert(
            saved_model, threads, names, dynamic_range=True
        ),
    }
    converted: dict[str, Any] = {}
    peers = {}
    for name, make in makers.items():
        try:
            runner, info = make()
            peers[name] = (runner, {"status": "OK", **info})
            converted.setdefault("model", getattr(runner, "model", None))
        except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, the rest go on
            logger.exception("%s failed", name)
            peers[name] = (None, {"status": "FAILED", "reason": f"{type(exc).__name__}: {exc}"})
    return peers


def prepare(model_name: str, work: Path, plan: dict[str, Any]) -> tuple[Any, Path, dict]:
    """The network, its exported SavedModel and the data: eval and calibration feeds."""
    from tasks.export import read_signature

    model = realsize.build(model_name, plan["batchnorm"])
    saved_model = realsize.export(model, work)
    signature = read_signature(saved_model)
    name = signature.input_names[0]
    eval_images = realsize.images(plan["eval"], realsize.EVAL_SEED)
    calibration = realsize.images(plan["calibration"], realsize.CALIBRATION_SEED)
    data = {
        "signature": signature,
        "eval_feeds": [{name: eval_images[i : i + 1]} for i in range(len(eval_images))],
        "calibration_feeds": [{name: calibration[i : i + 1]} for i in range(len(calibration))],
    }
    return model, saved_model, data


def judge_and_measure(
    runners: dict[str, Any],
    infos: dict[str, dict],
    data: dict[str, Any],
    plan: dict[str, Any],
    gemms: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, dict]]:
    """Fidelity of every runner vs TF, then one interleaved benchmark of all of them and of
    the GEMM peak runners; (the rounds, the GEMM runners' p50 and GOP/s)."""
    from tasks.benchmark import BenchmarkSettings
    from tasks.benchmark_rounds import benchmark_interleaved

    feeds, reference = data["eval_feeds"], data["reference"]
    for name, runner in runners.items():
        outputs = [runner(feed) for feed in feeds]
        infos[name]["fidelity"] = fidelity_of(outputs, reference)
        infos[name]["outputs_sha256"] = outputs_digest(outputs)
        drop = 1.0 - infos[name]["fidelity"]["cosine"]
        infos[name]["passed"] = drop <= GATE_COSINE_DROP
    settings = BenchmarkSettings(
        warmup_iterations=20,
        warmup_seconds=2.0,
        window_iterations=100,
        rounds=plan["rounds"],
        round_seconds=plan["round_seconds"],
        max_seconds=60.0,
    )
    measured = benchmark_interleaved({**runners, **gemms}, {1: feeds[:MEASURED_FEEDS]}, settings)
    peaks: dict[str, dict] = {}
    for name, by_size in measured.reports.items():
        report = by_size[1]
        if name in gemms:
            peaks[name] = {"p50_ms": report.p50_ms, "gops": gemms[name].ops / report.p50_ms / 1e6}
            continue
        infos[name]["latency"] = {
            "p50_ms": report.p50_ms,
            "p99_ms": report.p99_ms,
            "round_p50_iqr_ms": report.round_p50_iqr_ms,
            "round_p50_range_ms": report.round_p50_range_ms,
            "round_p50_ms": report.window_p50_ms,
            "rounds_kept": report.rounds_kept,
            "rounds_slow": report.rounds_slow,
            "machine_probe_ms": report.machine_probe_ms,
            "stable": report.stable,
            "iterations": report.iterations,
        }
    return measured.summary(), peaks


def headline(rows: dict[str, dict]) -> dict[str, Any]:
    """tfopt's choice (fastest passing tfopt variant) vs the fastest passing peer.

    Both are measured in the same rounds, so the speed ratio is taken per round (the peer's
    round median over the choice's) and its median reported, with the per-round values: a
    stretch in which the machine ran slow hits both sides of each round's ratio alike. Without
    per-round medians it is the ratio of the two p50s. `same_outputs` says the two computed the
    very same numbers on every eval image: then they are one model built by the same recipe
    (tfopt's `tflite:dynamic` and LiteRT's one-line `Optimize.DEFAULT` are), and the ratio is
    only the noise of timing one model twice.
    """

    def fastest(kind: str) -> tuple[str | None, float | None]:
        passing = {
            name: row["latency"]["p50_ms"]
            for name, row in rows.items()
            if row["kind"] == kind and row.get("passed") and "latency" in row
        }
        if not passing:
            return None, None
        best = min(passing, key=passing.__getitem__)
        return best, passing[best]

    chosen, chosen_ms = fastest("tfopt")
    peer, peer_ms = fastest("peer")
    if not (chosen_ms and peer_ms):
        per_round: list[float] = []
        ratio = None
    else:
        per_round = [
            p / c
            for p, c in zip(
                rows[peer]["latency"].get("round_p50_ms") or [],
                rows[chosen]["latency"].get("round_p50_ms") or [],
                strict=False,
            )
            if c > 0
        ]
        ratio = statistics.median(per_round) if per_round else peer_ms / chosen_ms
    return {
        "chosen": chosen,
        "chosen_p50_ms": chosen_ms,
        "best_peer": peer,
        "best_peer_p50_ms": peer_ms,
        "speed_vs_best_peer": ratio,
        "speed_vs_best_peer_rounds": [round(r, 4) for r in per_round],
        "same_outputs": bool(
            chosen
            and peer
            and rows[chosen].get("outputs_sha256")
            and rows[chosen].get("outputs_sha256") == rows[peer].get("outputs_sha256")
        ),
    }


def head_to_head(
    chosen: tuple[str, Any], peer: tuple[str, Any], feeds: Sequence[dict], rounds: int
) -> dict[str, Any]:
    """tfopt's choice and the best peer alone, in `rounds` short rounds, each starting with the
    other by turns: the two turns of a round lie a fraction of a second apart, so the machine's
    drift, which the many-runner rounds spread over tens of seconds, hits both alike. The ratio
    (peer / choice) is the median of the per-round ratios, with its 95% interval."""
    from tasks.benchmark import BenchmarkSettings
    from tasks.benchmark_rounds import benchmark_interleaved

    settings = BenchmarkSettings(
        warmup_iterations=10,
        warmup_seconds=1.0,
        window_iterations=100,
        rounds=rounds,
        round_seconds=DUEL_ROUND_SECONDS,
        max_seconds=120.0,
    )
    measured = benchmark_interleaved(dict([chosen, peer]), {1: list(feeds)}, settings)
    mine = measured.reports[chosen[0]][1].window_p50_ms
    theirs = measured.reports[peer[0]][1].window_p50_ms
    ratios = [p / c for c, p in zip(mine, theirs, strict=True) if c > 0]
    return {
        "ratio": statistics.median(ratios),
        "interval95": list(median_interval(ratios)),
        "rounds": [round(r, 4) for r in ratios],
        "spoiled": sum(1 for r in measured.rounds if r.spoiled_by),
    }


def median_interval(values: Sequence[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval of the median: the order statistics
    k and n-1-k with k = floor((n - 1.96 sqrt(n)) / 2) (the whole range below 6 values)."""
    ordered = sorted(values)
    count = len(ordered)
    k = max(0, int((count - 1.96 * count**0.5) / 2))
    return ordered[k], ordered[count - 1 - k]


def run_model(model_name: str, threads: int, work: Path, quick: bool) -> dict[str, Any]:
    """Everything for one network; the JSON document `bench.run` reads."""
    from bench.flops import layer_flops, profiler_flops
    from tasks.backends.tf import set_tf_threads

    set_tf_threads(threads)
    plan = QUICK if quick else FULL
    model, saved_model, data = prepare(model_name, work, plan)
    flops = {"profiler": profiler_flops(model)["total"], "layers": layer_flops(model)}
    runners: dict[str, Any] = {}
    rows: dict[str, dict] = {}
    for variant in tfopt_variants():
        runner, info = build_tfopt(variant, saved_model, work, threads, data)
        rows[variant] = {"kind": "tfopt", **info}
        if variant == BASELINE and runner is not None:
            data["reference"] = [runner(feed) for feed in data["eval_feeds"]]
            data["validation"] = accuracy_validation(data["eval_feeds"], data["reference"])
        if runner is not None:
            runners[variant] = runner
    if "reference" not in data:
        raise RuntimeError(f"{BASELINE} did not load: {rows[BASELINE]}")
    for name, (runner, info) in build_peers(saved_model, threads, data).items():
        rows[name] = {"kind": "peer", **info}
        if runner is not None:
            runners[name] = runner
    rounds, peaks = judge_and_measure(runners, rows, data, plan, gemm_runners(threads))
    rows["peer:tf-as-exported"] = {**rows[BASELINE], "kind": "peer", "same_as": BASELINE}
    top = headline(rows)
    if top["chosen"] and top["best_peer"]:
        duel = head_to_head(
            (top["chosen"], runners[top["chosen"]]),
            (top["best_peer"], runners[top["best_peer"]]),
            data["eval_feeds"][:MEASURED_FEEDS],
            plan["duel_rounds"],
        )
        top = {
            **top,
            "speed_vs_best_peer_in_rounds": top["speed_vs_best_peer"],
            "speed_vs_best_peer": duel["ratio"],
            "speed_vs_best_peer_rounds": duel["rounds"],
            "speed_vs_best_peer_interval95": duel["interval95"],
            "head_to_head_spoiled": duel["spoiled"],
        }
    return {
        "model": model_name,
        "image_size": realsize.IMAGE_SIZE,
        "params": int(model.count_params()),
        "flops": flops["profiler"],
        "flops_layers": flops["layers"]["flops"],
        "threads": threads,
        "plan": plan,
        "gate": f"fidelity cosine >= {1 - GATE_COSINE_DROP:.2f} (drop <= {GATE_COSINE_DROP})",
        "rows": rows,
        "rounds": rounds,
        "interleaved_peaks": peaks,
        **top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(realsize.APPLICATIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer images and rounds")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.model}-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run_model(args.model, args.threads, work, args.quick)
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
