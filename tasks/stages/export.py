"""The export stage: the source model becomes a serving SavedModel + signature manifest."""

from __future__ import annotations

import logging

from tasks import storage
from tasks.backends.tf import directory_size, set_tf_threads
from tasks.config import PipelineConfig, RunContext
from tasks.results import StageResult, Status
from tasks.stages.common import (
    _publish,
    _published,
)

logger = logging.getLogger(__name__)


def export_stage(config: PipelineConfig, ctx: RunContext) -> StageResult:
    """Export the source model to a serving SavedModel + signature manifest in S3."""
    from tasks.export import export_model

    uri = ctx.uri("export")
    if done := _published(uri, "export", config=config, ctx=ctx):
        return done
    set_tf_threads(config.num_threads)
    out_dir, signature, source_digest = export_model(config.model_uri, ctx.local("export-work"))
    result = StageResult(
        stage="export",
        status=Status.OK,
        uris={"export": uri, "source": config.model_uri},
        metrics={
            "source_digest": source_digest,
            "export_digest": storage.tree_digest(storage.digest_tree(out_dir)),
            "signature": signature.to_dict(),
            "size_bytes": directory_size(out_dir / "saved_model"),
        },
    )
    return _publish(out_dir, uri, result, config)
