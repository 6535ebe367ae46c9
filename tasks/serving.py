"""The pyfunc model consumers load from the registry: runs a variant with its own runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

VARIANT_ARTIFACT = "variant"
SIGNATURE_ARTIFACT = "signature"
META_ARTIFACT = "meta"


class VariantModel(mlflow.pyfunc.PythonModel):
    """Loads `backend:precision` artifacts with that backend's runtime and predicts.

    Input: `{input_name: ndarray}` (or one ndarray for a single-input model). Output: the
    ndarray of the single output, or `{output_name: ndarray}` when the model has several.
    """

    def load_context(self, context: Any) -> None:
        from tasks.backends import get_backend
        from tasks.signature import Signature

        meta = json.loads(Path(context.artifacts[META_ARTIFACT]).read_text())
        self.signature = Signature.read(Path(context.artifacts[SIGNATURE_ARTIFACT]).parent)
        backend = get_backend(meta["backend"])
        self.runner = backend.load(
            Path(context.artifacts[VARIANT_ARTIFACT]), self.signature, int(meta["num_threads"])
        )

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow reads hints
        from tasks.signature import as_feed

        if hasattr(model_input, "columns"):  # a DataFrame: one column per input
            model_input = {name: _column(model_input[name]) for name in model_input.columns}
        if isinstance(model_input, dict):
            feeds = {name: np.asarray(value) for name, value in model_input.items()}
        else:
            if len(self.signature.inputs) != 1:
                raise ValueError(f"this model has inputs {self.signature.input_names}; pass a dict")
            feeds = {self.signature.input_names[0]: np.asarray(model_input)}
        for tensor in self.signature.inputs:
            feeds[tensor.name] = as_feed(feeds[tensor.name], tensor.dtype)
        outputs = self.runner(feeds)
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        return outputs


def _column(series: Any) -> np.ndarray:
    """A DataFrame column as one array: scalars stay 1-D, per-row arrays are stacked."""
    values = series.tolist()
    if values and isinstance(values[0], list | np.ndarray):
        return np.stack([np.asarray(value) for value in values])
    return np.asarray(values)
