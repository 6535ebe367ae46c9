"""Export: a Keras file or SavedModel (S3 or local) -> canonical serving SavedModel + signature."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tasks import storage
from tasks.errors import UserInputError
from tasks.signature import Signature, TensorInfo

logger = logging.getLogger(__name__)

SAVED_MODEL_DIR = "saved_model"
SERVING_KEY = "serving_default"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
"""Keras model files: the Keras 3 archive, and the HDF5 file Keras 2 wrote (`model.save("m.h5")`),
which Keras 3 still loads."""


def locate_model(local: Path) -> tuple[str, Path]:
    """Say what the fetched model is: ("keras", file) or ("saved_model", dir).

    Raises:
        UserInputError: when it is neither a `.keras` file nor a SavedModel directory.
    """
    if local.is_file():
        if local.suffix.lower() in KERAS_SUFFIXES:
            return "keras", local
        raise UserInputError(
            f"model file {local.name!r} is not a Keras file (.keras, or .h5 from Keras 2); give "
            "a Keras file or a SavedModel directory"
        )
    if (local / "saved_model.pb").is_file():
        return "saved_model", local
    keras_files = sorted(p for p in local.iterdir() if p.suffix.lower() in KERAS_SUFFIXES)
    if len(keras_files) == 1:
        return "keras", keras_files[0]
    nested = [p.parent for p in local.glob("*/saved_model.pb")]
    if len(nested) == 1:
        return "saved_model", nested[0]
    raise UserInputError(
        f"no model found in {local}: expected one Keras file (.keras or .h5) or a SavedModel "
        "directory (with saved_model.pb)"
    )


def _export_keras(path: Path, out_dir: Path) -> None:
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - any load failure means a corrupt/unsupported file
        if "safe_mode" in str(exc):
            raise UserInputError(
                f"cannot load the Keras model {path.name}: it holds Python code (a Lambda layer "
                "with a Python function), which Keras loads only with safe_mode=False, and tfopt "
                "does not run code from a model file. Where you trust the model, export it as a "
                "SavedModel (model.export('folder')) and give that folder as model_uri; or "
                "replace the Lambda layers with custom layers registered with "
                "keras.saving.register_keras_serializable"
            ) from exc
        raise UserInputError(
            f"cannot load the Keras model {path.name}: {exc.__class__.__name__}: {exc}. "
            "Check that the file is complete (a .keras archive, or an HDF5 file Keras 2 saved); "
            "custom layers must be importable and registered with "
            "keras.saving.register_keras_serializable"
        ) from exc
    model.export(str(out_dir), format="tf_saved_model", verbose=False)


def _copy_saved_model(path: Path, out_dir: Path) -> None:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any load failure means a corrupt SavedModel
        raise UserInputError(
            f"cannot load the SavedModel at {path}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Re-export it with "
            "tf.saved_model.save or Keras model.export"
        ) from exc
    if SERVING_KEY in loaded.signatures:
        shutil.copytree(path, out_dir)
        return
    if len(loaded.signatures) != 1:
        raise UserInputError(
            f"the SavedModel at {path} has no {SERVING_KEY!r} signature "
            f"(it has: {', '.join(loaded.signatures) or 'none'}); export it with the signature "
            f"to optimise as {SERVING_KEY!r} (Keras: model.export(dir))"
        )
    (key,) = loaded.signatures
    logger.info("the SavedModel's only signature %r is saved as %r", key, SERVING_KEY)
    tf.saved_model.save(loaded, str(out_dir), signatures={SERVING_KEY: loaded.signatures[key]})


def read_signature(saved_model_dir: Path) -> Signature:
    """Read the serving signature (names, dtypes, shapes) of an exported SavedModel."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(saved_model_dir)).signatures[SERVING_KEY]
    _, input_specs = fn.structured_input_signature
    inputs = tuple(
        TensorInfo(name, spec.dtype.name, tuple(spec.shape.as_list()))
        for name, spec in sorted(input_specs.items())
    )
    outputs = tuple(
        TensorInfo(name, spec.dtype.name, tuple(spec.shape.as_list()))
        for name, spec in sorted(fn.structured_outputs.items())
    )
    for tensor in inputs:
        if not tensor.shape or tensor.shape[0] not in (None, -1):
            logger.warning("input %s has a fixed batch dimension %s", tensor.name, tensor.shape)
    return Signature(inputs=inputs, outputs=outputs)


def export_model(model_uri: str, work_dir: Path) -> tuple[Path, Signature, str]:
    """Fetch `model_uri` and write the canonical serving SavedModel plus signature.json.

    Returns:
        The local export directory (holding `saved_model/` and `signature.json`), the
        signature and the sha256 digest of the source model.
    """
    source = storage.fetch_tree(model_uri, work_dir / "source", require_manifest=False)
    kind, path = locate_model(Path(source))
    source_digest = storage.tree_digest(
        storage.digest_tree(path) if path.is_dir() else {path.name: storage.sha256_file(path)}
    )
    out_dir = work_dir / "export"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    logger.info("exporting %s model from %s", kind, model_uri)
    if kind == "keras":
        _export_keras(path, out_dir / SAVED_MODEL_DIR)
    else:
        _copy_saved_model(path, out_dir / SAVED_MODEL_DIR)
    signature = read_signature(out_dir / SAVED_MODEL_DIR)
    signature.write(out_dir)
    logger.info(
        "serving signature: inputs %s, outputs %s",
        [t.to_dict() for t in signature.inputs],
        [t.to_dict() for t in signature.outputs],
    )
    return out_dir, signature, source_digest
