"""The models file: parsing, the errors it names, and the DAGs generated from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
sys.path.insert(0, str(DAGS))

from tfopt_models import ModelsConfigError, load_models  # noqa: E402

TWO_MODELS = """
models:
  - registered_model_name: team-a.classifier
    asset: team_a_model
    schedule: "0 3 * * *"
    max_active_runs: 2
    aws_conn_id: team_a_s3
    tags: [team-a]
    defaults:
      model_uri: s3://a/model.keras
      eval_data_uri: s3://a/eval
      calibration_data_uri: s3://a/calibration
      variants: ["tf:fp32", "tflite:int8"]
      accuracy_tolerance: 0.02
  - registered_model_name: team-b
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.unit
def test_entries_get_their_defaults_and_derived_names(tmp_path):
    a, b = load_models(_write(tmp_path, TWO_MODELS))
    assert (a.dag_id, a.asset, a.schedule, a.max_active_runs) == (
        "optimize_team_a_classifier",
        "team_a_model",
        "0 3 * * *",
        2,
    )
    assert (a.aws_conn_id, a.mlflow_conn_id, a.tags) == ("team_a_s3", "mlflow_default", ("team-a",))
    assert a.defaults["accuracy_tolerance"] == 0.02
    assert (b.dag_id, b.asset, b.schedule, dict(b.defaults)) == (
        "optimize_team_b",
        "team-b",
        None,
        {},
    )


@pytest.mark.unit
def test_the_repository_file_has_the_demo_as_optimize_model():
    entries = {entry.dag_id: entry for entry in load_models(DAGS / "models.yaml")}
    demo = entries["optimize_model"]
    assert (demo.registered_model_name, demo.asset) == ("tfopt-demo", "tfopt_demo_model")


BAD = [
    ("models: {}", "expected a mapping with a list under 'models:'"),
    ("models:\n  - dag_id: x", "models[0]: 'registered_model_name' is required"),
    ("models:\n  - registered_model_name: m\n    schedul: '@daily'", "unknown key(s) ['schedul']"),
    (
        "models:\n  - registered_model_name: m\n    defaults: {accuracy_tolerence: 0.1}",
        "unknown parameter(s) in defaults: ['accuracy_tolerence']",
    ),
    (
        "models:\n  - registered_model_name: m\n    defaults:\n      model_uri: s3://b/m\n"
        "      eval_data_uri: s3://b/e\n      calibration_data_uri: s3://b/c\n"
        "      accuracy_tolerance: 5",
        "models[0] (m): defaults: accuracy_tolerance must be between 0 and 1",
    ),
    (
        "models:\n  - registered_model_name: m\n"
        "  - registered_model_name: n\n    dag_id: optimize_m",
        "models[1] and models[0] share dag_id 'optimize_m'",
    ),
    ("models:\n  - registered_model_name: m\n    max_active_runs: 0", "max_active_runs must be"),
    ("models: [\n", "not valid YAML"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("text", "message"), BAD)
def test_mistakes_are_named_at_parse_time(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ModelsConfigError) as error:
        load_models(path)
    assert message in str(error.value)
    assert str(path) in str(error.value)


DAGBAG_PROBE = """
import json, sys
sys.path.insert(0, {dags!r})
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={dag_file!r})
names = ("registered_model_name", "aws_conn_id")
dags = {{
    dag_id: {{
        "params": {{k: bag.dags[dag_id].params[k] for k in names}},
        "max_active_runs": bag.dags[dag_id].max_active_runs,
        "timetable": type(bag.dags[dag_id].timetable).__name__,
    }}
    for dag_id in bag.dag_ids
}}
print(json.dumps({{"dags": dags, "errors": {{k: str(v) for k, v in bag.import_errors.items()}}}}))
"""


def _parse(models_file: Path, tmp_path: Path) -> dict:
    probe = DAGBAG_PROBE.format(dags=str(DAGS), dag_file=str(DAGS / "optimize_model.py"))
    env = {
        **os.environ,
        "TFOPT_MODELS_CONFIG": str(models_file),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.dags
def test_one_dag_per_model_with_its_own_defaults_and_schedule(tmp_path):
    parsed = _parse(_write(tmp_path, TWO_MODELS), tmp_path)
    assert parsed["errors"] == {}
    dags = parsed["dags"]
    assert set(dags) == {"optimize_team_a_classifier", "optimize_team_b"}
    a, b = dags["optimize_team_a_classifier"], dags["optimize_team_b"]
    assert a["params"] == {"registered_model_name": "team-a.classifier", "aws_conn_id": "team_a_s3"}
    assert (a["max_active_runs"], a["timetable"]) == (2, "AssetOrTimeSchedule")
    assert b["params"]["registered_model_name"] == "team-b" and b["max_active_runs"] == 1
    assert b["timetable"] == "AssetTriggeredTimetable"


@pytest.mark.dags
def test_a_bad_models_file_is_an_import_error_that_names_the_entry(tmp_path):
    bad = "models:\n  - registered_model_name: m\n    defaults: {objective: fastest}\n"
    parsed = _parse(_write(tmp_path, bad), tmp_path)
    assert parsed["dags"] == {}
    (message,) = parsed["errors"].values()
    assert "models[0] (m)" in message and "objective" in message
