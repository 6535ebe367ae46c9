"""Shared fixtures: the running local stack (SeaweedFS S3 + MLflow) and a tiny trained model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
STACK_SCRIPT = REPO / "infra" / "local" / "stack.py"
# A stack of its own, on ports that do not clash with a developer's `make up` (8333/5000/8080).
# TFOPT_TEST_PORT_OFFSET shifts all of them, so that two checkouts can test side by side.
_PORT_OFFSET = int(os.environ.get("TFOPT_TEST_PORT_OFFSET") or 0)
TEST_STACK = {
    "TFOPT_STACK_DIR": str(
        REPO / (f".stack-test-{_PORT_OFFSET}" if _PORT_OFFSET else ".stack-test")
    ),  # noqa: E501
    "TFOPT_S3_PORT": str(18333 + _PORT_OFFSET),
    "TFOPT_MLFLOW_PORT": str(15050 + _PORT_OFFSET),
    "TFOPT_AIRFLOW_PORT": str(18080 + _PORT_OFFSET),
    "TFOPT_BUCKET": "tfopt",
}
NEEDED = ("seaweedfs", "mlflow")
# What points a client at a running stack; `unit` tests must not see it (they use moto / files).
STACK_ENDPOINT_VARS = (
    "TFOPT_STACK_DIR",
    "TFOPT_S3_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_URI",
)
START_TIMEOUT_S = 420


@dataclass(frozen=True)
class LocalStack:
    """A running stack: its folder, its client environment (stack.env) and what it serves."""

    stack_dir: Path
    env: dict[str, str] = field(repr=False)
    started_here: tuple[str, ...]

    @property
    def s3_endpoint_url(self) -> str:
        return self.env["TFOPT_S3_ENDPOINT_URL"]

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def bucket(self) -> str:
        return self.env["TFOPT_BUCKET"]

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
        """Run `stack.py <args>` against this stack (extra `env` overrides)."""
        return _stack_cli(list(args), {**os.environ, **self.env, **env}, timeout)


def _stack_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(STACK_SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _healthy_services(env: dict[str, str]) -> set[str]:
    result = _stack_cli(["status", "--json"], env, timeout=60)
    try:
        rows = json.loads(result.stdout)["services"]
    except (ValueError, KeyError):
        return set()
    return {row["service"] for row in rows if row["healthy"]}


def _existing_stack_env() -> dict[str, str] | None:
    """The environment of a stack already up and sourced by the caller (`make test`), if any."""
    if not os.environ.get("TFOPT_STACK_DIR"):
        return None
    env = dict(os.environ)
    return env if set(NEEDED) <= _healthy_services(env) else None


def _start_test_stack() -> tuple[dict[str, str], tuple[str, ...]]:
    env = {**os.environ, **TEST_STACK}
    before = _healthy_services(env)
    if set(NEEDED) <= before:
        return env, ()
    result = _stack_cli(["up"], env, timeout=START_TIMEOUT_S)
    started = tuple(name for name in NEEDED if name not in before)
    if result.returncode != 0:
        _stack_cli(["down", *started], env, timeout=120)
        pytest.fail(
            f"the local stack did not start (stack.py up exited {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return env, started


def _read_stack_env(stack_dir: Path) -> dict[str, str]:
    from infra.local.stack import read_env_file

    return read_env_file(stack_dir / "stack.env")


@pytest.fixture(scope="session")
def local_stack() -> Iterator[LocalStack]:
    """The local stack for integration tests: reused when already up, else started for the session.

    A stack the caller already runs (its stack.env sourced, e.g. by `make test`) is used as is.
    Otherwise `infra/local/stack.py up` starts one in `<repo>/.stack-test` (S3 on 18333, MLflow
    on 15050: 15000 is where other tests run moto_server); the services this fixture started are
    stopped at the end, nothing else. os.environ holds the stack's stack.env for the session. If
    the stack cannot start, the test fails with the services' log tails (never skipped).
    """
    reused = _existing_stack_env()
    env, started = (reused, ()) if reused is not None else _start_test_stack()
    stack_dir = Path(env["TFOPT_STACK_DIR"])
    stack = LocalStack(stack_dir=stack_dir, env=_read_stack_env(stack_dir), started_here=started)
    saved = {name: os.environ.get(name) for name in stack.env}
    os.environ.update(stack.env)
    try:
        yield stack
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if started:
            result = _stack_cli(["down", *started], env, timeout=180)
            sys.stderr.write(f"\nstack.py down:\n{result.stdout}{result.stderr}")


@pytest.fixture(autouse=True)
def _unit_tests_do_not_see_the_stack(request, monkeypatch):
    """Hide the stack's endpoints from `unit` tests (a sourced stack.env, or `local_stack`)."""
    if request.node.get_closest_marker("unit"):
        for name in STACK_ENDPOINT_VARS:
            monkeypatch.delenv(name, raising=False)


# --- a tiny trained Keras model with eval and calibration shards on disk ---------------------

INPUT = "image"
SIZE = 16


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, SIZE, SIZE, 3), dtype=np.float32)
    labels = (
        images[:, : SIZE // 2].mean(axis=(1, 2, 3)) > images[:, SIZE // 2 :].mean(axis=(1, 2, 3))
    ).astype(np.int64)
    return images, labels


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> dict[str, Path]:
    """A small conv net trained for a few epochs (a real model, seconds to build)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    images, labels = _data(800, seed=0)
    inputs = keras.Input((SIZE, SIZE, 3), name=INPUT)
    hidden = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(2, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images[:500], labels[:500], epochs=15, verbose=0)
    (root / "model").mkdir()
    model.save(root / "model" / "model.keras")
    for name in ("eval", "calibration", "saved_model_src"):
        (root / name).mkdir()
    np.savez(root / "eval" / "shard-00000.npz", image=images[500:650], labels=labels[500:650])
    np.savez(root / "eval" / "shard-00001.npz", image=images[650:700], labels=labels[650:700])
    np.savez(root / "calibration" / "shard-00000.npz", image=images[700:800])
    return {
        "root": root,
        "model": root / "model" / "model.keras",
        "eval": root / "eval",
        "calibration": root / "calibration",
    }


@pytest.fixture
def model_name() -> str:
    """A registered model name of its own for each test."""
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def work_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TFOPT_WORK_DIR", str(tmp_path / "work"))
    return tmp_path / "work"
