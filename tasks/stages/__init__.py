"""The pipeline's stages: (config, run context, upstream results) -> StageResult, S3 in and out.

The DAG runs each stage as a task and the CLI runs them in a row; both pass only the small
`StageResult` dicts between stages. Every stage publishes its output under the run's S3 prefix
with a manifest written last, and a retried stage that finds its manifest returns at once.
One module per stage; this package exposes them all.
"""

from tasks.stages.common import CHAMPION_MIN_GAIN, REFERENCE_DIR, VALIDATION_BATCH
from tasks.stages.convert import convert_stage
from tasks.stages.data import DataPlan, data_plan, prepare_data_stage
from tasks.stages.export import export_stage
from tasks.stages.measure import benchmark_lanes, benchmark_stage, validate_stage
from tasks.stages.register import register_stage
from tasks.stages.report import report_stage
from tasks.stages.selection import collect_summaries, select_stage

__all__ = [
    "CHAMPION_MIN_GAIN",
    "REFERENCE_DIR",
    "VALIDATION_BATCH",
    "DataPlan",
    "benchmark_lanes",
    "benchmark_stage",
    "collect_summaries",
    "convert_stage",
    "data_plan",
    "export_stage",
    "prepare_data_stage",
    "register_stage",
    "report_stage",
    "select_stage",
    "validate_stage",
]
