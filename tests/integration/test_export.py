"""Export of the model files users bring: the Keras 3 archive and Keras 2's HDF5 file."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import UserInputError
from tasks.export import export_model, locate_model

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_keras_file_exports_to_a_serving_saved_model_that_predicts_like_it(tmp_path, suffix):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    path = tmp_path / "models" / f"model{suffix}"
    path.parent.mkdir()
    model.save(path)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)

    for uri in (path, path.parent):  # the file, or the folder holding it
        export_dir, signature, _ = export_model(str(uri), tmp_path / f"work-{uri.name}")
        assert signature.input_names == ("features",)
        (output,) = signature.output_names
        served = tf.saved_model.load(str(export_dir / "saved_model")).signatures[signature.key]
        np.testing.assert_allclose(
            served(features=tf.constant(x))[output].numpy(), model.predict(x, verbose=0), atol=1e-6
        )


def test_a_file_that_is_no_model_is_refused_with_what_to_give(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"not a keras model")
    with pytest.raises(UserInputError, match=r"not a Keras file \(.keras, or .h5"):
        locate_model(weights)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"truncated")
    with pytest.raises(UserInputError, match="cannot load the Keras model broken.h5"):
        export_model(str(broken), tmp_path / "work")


def test_a_lambda_layer_with_python_code_is_refused_with_the_saved_model_route(tmp_path):
    import keras

    inputs = keras.Input((4,), name="features")
    doubled = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(doubled))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(UserInputError) as raised:
        export_model(str(path), tmp_path / "work")
    message = str(raised.value)
    assert "holds Python code (a Lambda layer" in message
    assert "model.export('folder')" in message and "model_uri" in message

    model.export(str(tmp_path / "exported"), format="tf_saved_model", verbose=False)
    _, signature, _ = export_model(str(tmp_path / "exported"), tmp_path / "work-saved")
    assert signature.input_names == ("features",)


def _module_with_signatures(path, *keys):
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable([[1.0, -1.0], [0.5, 2.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def predict(self, x):
            return {"scores": tf.matmul(x, self.w)}

    scorer = Scorer()
    tf.saved_model.save(scorer, str(path), signatures={key: scorer.predict for key in keys})


def test_a_saved_model_whose_one_signature_has_another_name_serves_it(tmp_path):
    import tensorflow as tf

    _module_with_signatures(tmp_path / "predict-only", "predict")
    export_dir, signature, _ = export_model(str(tmp_path / "predict-only"), tmp_path / "work")
    assert signature.input_names == ("x",) and signature.output_names == ("scores",)
    served = tf.saved_model.load(str(export_dir / "saved_model")).signatures["serving_default"]
    got = served(x=tf.constant([[1.0, 2.0]]))["scores"].numpy()
    np.testing.assert_allclose(got, [[2.0, 3.0]])

    _module_with_signatures(tmp_path / "two", "predict", "classify")
    with pytest.raises(UserInputError, match=r"has no 'serving_default' signature \(it has: "):
        export_model(str(tmp_path / "two"), tmp_path / "work-two")
