"""MLflow tracking settings: where the tracking server is and how to authenticate to it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# MLflow's client reads these (mlflow.environment_variables); tfopt sets them from the settings.
_ENV_NAMES = {
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "username": "MLFLOW_TRACKING_USERNAME",
    "password": "MLFLOW_TRACKING_PASSWORD",
    "token": "MLFLOW_TRACKING_TOKEN",
}


@dataclass(frozen=True)
class MlflowSettings:
    """The MLflow tracking server (`tracking_uri`) and optional basic-auth or token credentials.

    Credentials are kept out of `repr`, so the settings can be logged.
    """

    tracking_uri: str | None = None
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MlflowSettings:
        """The CLI's way: `MLFLOW_TRACKING_URI` (unset: MLflow's default store) and credentials."""
        env = os.environ if environ is None else environ
        return cls(**{name: env.get(var) or None for name, var in _ENV_NAMES.items()})

    def environ(self) -> dict[str, str]:
        """The MLflow client variables these settings stand for (unset credentials left out)."""
        values = {
            "tracking_uri": self.tracking_uri,
            "username": self.username,
            "password": self.password,
            "token": self.token,
        }
        return {_ENV_NAMES[name]: value for name, value in values.items() if value}


@contextlib.contextmanager
def use_mlflow(settings: MlflowSettings) -> Iterator[MlflowSettings]:
    """Point this process's MLflow client at `settings` for the block, then restore.

    MLflow's client reads its server and credentials from the process environment, so the
    settings are applied there; the previous values come back on exit.
    """
    saved = {var: os.environ.get(var) for var in _ENV_NAMES.values()}
    for var in _ENV_NAMES.values():
        os.environ.pop(var, None)
    os.environ.update(settings.environ())
    _reset_tracking_uri(settings.tracking_uri)
    log.debug("MLflow tracking server: %s", settings.tracking_uri)
    try:
        yield settings
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        _reset_tracking_uri(saved[_ENV_NAMES["tracking_uri"]])


def _reset_tracking_uri(uri: str | None) -> None:
    """Tell an already imported MLflow about the change (it caches a URI set in-process)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        # Forget any URI set in-process (set_tracking_uri(None) also drops the variable), so
        # that MLflow reads the environment again: an in-process URI would outlive this block.
        mlflow.set_tracking_uri(None)
        if uri is not None:
            os.environ[_ENV_NAMES["tracking_uri"]] = uri
