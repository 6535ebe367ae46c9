"""MLflow faults around registration, and two runs racing for `champion`, on the real stack."""

from __future__ import annotations

import threading
import time

import pytest

from tasks import registry
from tasks.errors import TransientError
from tests.faults.proxy import fault_proxy
from tests.faults.registry_support import (
    FAST,
    SLOW,
    champion_of,
    duplicated,
    new_model_name,
    register,
    register_inputs,
    server,
    versions_of,
)

pytestmark = pytest.mark.faults


def test_mlflow_500_while_the_champion_is_read(prepared, local_stack, outcome, monkeypatch):
    name = new_model_name("500")
    first = register(prepared, register_inputs(prepared, name, "first", FAST))
    champion = first.metrics["model_version"]
    assert champion_of(local_stack, name) == champion
    second = register_inputs(prepared, name, "second", SLOW)
    with fault_proxy(local_stack.mlflow_tracking_uri) as (url, rules):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        original = registry.register_version

        def then_fail_reads(*args, **kwargs):
            version = original(*args, **kwargs)
            rules.failing = {
                ("GET", "/registered-models/get"),
                ("GET", "/registered-models/alias"),
            }
            return version

        monkeypatch.setattr(registry, "register_version", then_fail_reads)
        with pytest.raises(TransientError, match="INTERNAL_ERROR"):
            register(prepared, second)
        outcome.faults = rules.injected
    monkeypatch.setattr(registry, "register_version", original)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_stack.mlflow_tracking_uri)
    outcome.moved = int(champion_of(local_stack, name) != champion)
    assert outcome.faults > 0 and outcome.moved == 0

    retried = register(prepared, second)
    outcome.survived = 1
    outcome.duplicated = duplicated(local_stack, name)
    assert outcome.duplicated == 0
    assert len(versions_of(local_stack, name, second.ctx.run_id)) == 1
    # The slower variant never takes `champion` from the faster one.
    assert retried.metrics["champion"] is False
    assert champion_of(local_stack, name) == champion


def test_mlflow_stopped_between_version_and_aliases(prepared, local_stack, outcome, monkeypatch):
    name = new_model_name("down")
    inputs = register_inputs(prepared, name, "run", FAST)
    original = registry.register_version
    stopped_at: list[float] = []

    def then_stop_mlflow(*args, **kwargs):
        version = original(*args, **kwargs)
        result = local_stack.run("down", "mlflow", timeout=180)
        assert result.returncode == 0, result.stderr
        stopped_at.append(time.monotonic())
        outcome.faults += 1
        return version

    monkeypatch.setattr(registry, "register_version", then_stop_mlflow)
    try:
        with pytest.raises(TransientError, match="tracking server"):
            register(prepared, inputs)
        failed_after = time.monotonic() - stopped_at[0]
    finally:
        started = local_stack.run("up", timeout=420)
    assert started.returncode == 0, started.stdout + started.stderr
    outcome.extra["failed_after_s"] = round(failed_after, 1)
    # MLflow's own retries are bounded: the task fails in seconds, not after minutes.
    assert failed_after < 60, failed_after
    assert champion_of(local_stack, name) is None

    monkeypatch.setattr(registry, "register_version", original)
    result = register(prepared, inputs)
    outcome.survived = 1
    outcome.duplicated = duplicated(local_stack, name)
    versions = versions_of(local_stack, name, inputs.ctx.run_id)
    assert outcome.duplicated == 0 and len(versions) == 1
    assert champion_of(local_stack, name) == versions[0].version == result.metrics["model_version"]
    aliases = server(local_stack).get_registered_model(name).aliases
    assert str(aliases["challenger"]) == versions[0].version
    assert versions[0].tags[registry.COMPLETE_TAG] == "true"


def test_two_runs_race_for_champion(prepared, local_stack, outcome, monkeypatch):
    name = new_model_name("race")
    slow = register_inputs(prepared, name, "slow", SLOW)
    fast = register_inputs(prepared, name, "fast", FAST)
    real = registry.current_champion
    slow_has_read = threading.Event()

    def slow_reader(model: str):
        champion = real(model)
        if threading.current_thread().name == "slow":
            slow_has_read.set()
            time.sleep(4)  # the slow run decides late: the window for a lost update
        return champion

    monkeypatch.setattr(registry, "current_champion", slow_reader)
    results, errors = {}, {}

    def run(inputs, label):
        try:
            results[label] = register(prepared, inputs)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors[label] = exc

    threads = {
        "slow": threading.Thread(target=run, args=(slow, "slow"), name="slow"),
        "fast": threading.Thread(target=run, args=(fast, "fast"), name="fast"),
    }
    threads["slow"].start()
    assert slow_has_read.wait(timeout=300)
    threads["fast"].start()
    for thread in threads.values():
        thread.join(timeout=600)
    outcome.faults = 1
    assert not errors, errors
    outcome.survived = len(results)
    fast_version = results["fast"].metrics["model_version"]
    outcome.moved = int(champion_of(local_stack, name) != fast_version)
    outcome.duplicated = duplicated(local_stack, name)
    assert outcome.moved == 0 and outcome.duplicated == 0
    for label, result in results.items():
        version = server(local_stack).get_model_version(name, result.metrics["model_version"])
        assert version.tags[registry.COMPLETE_TAG] == "true", label
        assert version.tags[registry.DECISION_TAG] in ("champion", "challenger"), label
    assert results["fast"].metrics["champion"] is True
