"""After a run, the stack's credentials appear in no log, result, manifest, MLflow record or
command line."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from tasks import stages, storage
from tasks.config import RunContext
from tests.faults.registry_support import new_model_name, server

pytestmark = pytest.mark.faults


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(entry.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # the process ended meanwhile
            continue
    return lines


def _mlflow_records(local_stack, name: str, parent_run_id: str) -> list[str]:
    client = server(local_stack)
    parent = client.get_run(parent_run_id)
    runs = [parent, *client.search_runs([parent.info.experiment_id])]
    texts = [json.dumps({"params": r.data.params, "tags": r.data.tags}) for r in runs]
    texts += [json.dumps(v.tags) for v in client.search_model_versions(f"name = '{name}'")]
    return texts


def test_credentials_never_leave_the_environment(prepared, local_stack, outcome, caplog):
    secrets = {
        "AWS_SECRET_ACCESS_KEY": local_stack.env["AWS_SECRET_ACCESS_KEY"],
        "AWS_ACCESS_KEY_ID": local_stack.env["AWS_ACCESS_KEY_ID"],
    }
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="botocore")
    config = dataclasses.replace(prepared.config, registered_model_name=new_model_name("creds"))
    ctx = RunContext.create("creds", config.registered_model_name)
    export = stages.export_stage(config, ctx)
    data = stages.prepare_data_stage(config, ctx, export)
    conversions = [
        stages.convert_stage(config, ctx, spec.name, export, data) for spec in config.variants
    ]
    validations = [stages.validate_stage(config, ctx, c, export, data) for c in conversions]
    benchmarks = stages.benchmark_lanes(config, ctx, conversions, data)
    results = [export, data, *conversions, *validations, *benchmarks]
    summaries = stages.collect_summaries(conversions, validations, benchmarks)
    selection, summaries = stages.select_stage(config, summaries)
    rows = [summary.to_dict() for summary in summaries]
    registration = stages.register_stage(config, ctx, export, data, rows, selection)
    outcome.survived = 1
    haystacks = {
        "logs": [caplog.text],
        "stage results (XCom)": [json.dumps([r.to_dict() for r in results + [registration]])],
        "rows and selection": [json.dumps([rows, selection], default=str)],
        "published manifests": [
            json.dumps(storage.get_json(storage.join_uri(ctx.root_uri, key)))
            for key in storage.list_keys(ctx.root_uri)
            if key.endswith(storage.MANIFEST_NAME)
        ],
        "MLflow params and tags": _mlflow_records(
            local_stack, config.registered_model_name, registration.metrics["mlflow_run_id"]
        ),
        "command lines": _command_lines(),
    }
    assert all(haystacks.values())  # every place was really read
    leaks = [
        f"{variable} in {place}"
        for place, texts in haystacks.items()
        for text in texts
        for variable, value in secrets.items()
        if value in text
    ]
    outcome.extra["places_checked"] = len(haystacks)
    loggers = sorted(
        {r.name for r in caplog.records if any(v in r.getMessage() for v in secrets.values())}
    )
    assert leaks == [], loggers
