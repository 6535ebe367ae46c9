"""tfopt: optimise a trained TensorFlow model for inference and publish it."""
