"""The exception hierarchy: user errors (fix the input) vs transient errors (retry)."""


class TfoptError(Exception):
    """Base of every error tfopt raises on purpose."""


class UserInputError(TfoptError):
    """The input is wrong (URI, model, data, parameter); retrying will not help.

    The message says what to fix.
    """


class TransientError(TfoptError):
    """A service (S3, MLflow, network) failed in a way that a retry may fix."""
