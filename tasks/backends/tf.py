"""The baseline backend: the serving SavedModel as exported, run by TensorFlow (FP32)."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from tasks.backends.base import (
    Conversion,
    ConversionRequest,
    Feeds,
    check_feeds,
    check_precision,
)
from tasks.errors import UserInputError
from tasks.signature import Signature, as_feed

log = logging.getLogger(__name__)


def directory_size(directory: Path) -> int:
    """Total size in bytes of the files under `directory`."""
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


def set_tf_threads(num_threads: int) -> bool:
    """Sets TensorFlow's intra-/inter-op thread pools; False (logged) once TF has initialised.

    TensorFlow fixes its thread pools when its runtime context starts, so only the first setting
    in a process counts.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(num_threads)
    except RuntimeError as exc:  # raised only when the value differs from the one in force
        log.warning(
            "TensorFlow is already initialised with intra-op threads %s; cannot set %s (%s)",
            tf.config.threading.get_intra_op_parallelism_threads() or "default",
            num_threads,
            exc,
        )
        return False
    return True


class TfRunner:
    """Runs the `serving_default` signature of a SavedModel and returns numpy arrays."""

    def __init__(self, artifact_dir: Path, signature: Signature) -> None:
        import tensorflow as tf

        self.input_names = signature.input_names
        self.output_names = signature.output_names
        self._dtypes = {t.name: t.dtype for t in signature.inputs}
        self._tf = tf
        # Keep the loaded object alive: the signature function only holds weak references.
        self._loaded = tf.saved_model.load(str(artifact_dir))
        if signature.key not in self._loaded.signatures:
            raise UserInputError(
                f"SavedModel {artifact_dir} has no signature {signature.key!r}; "
                f"it has {sorted(self._loaded.signatures)}"
            )
        self._function = self._loaded.signatures[signature.key]

    def __call__(self, feeds: Feeds) -> Feeds:
        check_feeds(self.input_names, feeds)
        tensors = {
            name: self._tf.constant(as_feed(feeds[name], self._dtypes[name]))
            for name in self.input_names
        }
        outputs: dict[str, Any] = self._function(**tensors)
        missing = [name for name in self.output_names if name not in outputs]
        if missing:
            raise UserInputError(
                f"the model's outputs {sorted(outputs)} lack {missing} named by the signature"
            )
        return {name: outputs[name].numpy() for name in self.output_names}


class TfBackend:
    """The exported SavedModel itself: the baseline every variant is compared with."""

    name = "tf"
    precisions = ("fp32",)

    def available(self) -> str | None:
        """TensorFlow is a dependency of tfopt, so the baseline always runs."""
        return None

    def convert(self, request: ConversionRequest) -> Conversion:
        """Copies the SavedModel as exported into `request.output_dir`."""
        check_precision(self.name, self.precisions, request.precision)
        source = Path(request.saved_model_dir)
        if not (source / "saved_model.pb").is_file():
            raise UserInputError(f"{source} is not a SavedModel directory (no saved_model.pb)")
        started = time.perf_counter()
        output_dir = Path(request.output_dir)
        shutil.copytree(source, output_dir, dirs_exist_ok=True)
        request.signature.write(output_dir)
        summary = {
            "size_bytes": directory_size(output_dir),
            "conversion_seconds": round(time.perf_counter() - started, 3),
        }
        log.info("tf:fp32 copied %s to %s (%s bytes)", source, output_dir, summary["size_bytes"])
        return Conversion(artifact_dir=output_dir, summary=summary)

    def load(self, artifact_dir: Path, signature: Signature, num_threads: int) -> TfRunner:
        """Loads the SavedModel's signature, after trying to set TF's thread pools."""
        set_tf_threads(num_threads)
        return TfRunner(Path(artifact_dir), signature)
