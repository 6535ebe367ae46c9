"""Airflow connections turned into the settings tfopt's library takes (S3, MLflow).

Shared by the DAGs (inside task callables) and the UI plugin (API server). The S3 connection
follows the amazon provider's conventions (`AwsConnectionWrapper`: keys in login/password or
extra, `region_name` and `endpoint_url` in extra, `service_config.s3.endpoint_url` first). The
MLflow connection is an http connection: host (with or without scheme), `schema` as the scheme
when the host has none, port, an optional path in extra `path`, login/password for basic auth or
extra `token` for a bearer token. A connection that is not defined falls back to the
environment, as the amazon provider falls back to boto3's default credential chain.
Only connection ids and endpoints are logged, never credentials.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.storage import S3Settings
    from tasks.tracking import MlflowSettings

log = logging.getLogger(__name__)

DEFAULT_S3_CONN_ID = "tfopt_s3"
DEFAULT_MLFLOW_CONN_ID = "mlflow_default"


def get_connection(conn_id: str, *, in_task: bool = True) -> Any | None:
    """The Airflow connection `conn_id`, or None when it is not defined.

    Args:
        in_task: inside a task (the Task SDK asks the API server); False in the API server
            itself, which reads environment variables, secrets backends and the metastore.
    """
    if in_task:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return BaseHook.get_connection(conn_id)
        except AirflowNotFoundException:
            return None
    from airflow.exceptions import AirflowNotFoundException as NotFound
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except NotFound:
        return None


def s3_settings(conn_id: str | None = DEFAULT_S3_CONN_ID, *, in_task: bool = True) -> S3Settings:
    """S3 settings from the amazon-provider connection `conn_id`, else from the environment."""
    from tasks.storage import DEFAULT_REGION, S3Settings

    env = S3Settings.from_env()
    conn = get_connection(conn_id, in_task=in_task) if conn_id else None
    if conn is None:
        log.warning("S3 connection %r is not defined: using the environment (%s)", conn_id, env)
        return env
    from airflow.providers.amazon.aws.utils.connection_wrapper import AwsConnectionWrapper

    wrapper = AwsConnectionWrapper(conn=conn)
    bucket = wrapper.get_service_config("s3").get("bucket_name") or env.bucket
    settings = S3Settings(
        endpoint_url=wrapper.get_service_endpoint_url("s3"),
        access_key_id=wrapper.aws_access_key_id,
        secret_access_key=wrapper.aws_secret_access_key,
        region=wrapper.region_name or DEFAULT_REGION,
        bucket=bucket,
    )
    log.debug("S3 from connection %r: %s", conn_id, settings)
    return settings


def mlflow_settings(
    conn_id: str | None = DEFAULT_MLFLOW_CONN_ID, *, in_task: bool = True
) -> MlflowSettings:
    """MLflow settings from the http connection `conn_id`, else from the environment."""
    from tasks.tracking import MlflowSettings

    conn = get_connection(conn_id, in_task=in_task) if conn_id else None
    if conn is None:
        env = MlflowSettings.from_env()
        log.warning("MLflow connection %r is not defined: using the environment (%s)", conn_id, env)
        return env
    extra = conn.extra_dejson or {}
    settings = MlflowSettings(
        tracking_uri=tracking_uri(conn.host, conn.schema, conn.port, extra.get("path")),
        username=conn.login or None,
        password=conn.password or None,
        token=extra.get("token") or None,
    )
    log.debug("MLflow from connection %r: %s", conn_id, settings)
    return settings


def tracking_uri(host: str | None, schema: str | None, port: int | None, path: str | None) -> str:
    """`scheme://host[:port][/path]` from an http connection's parts.

    Raises:
        UserInputError: the connection has no host.
    """
    from tasks.errors import UserInputError

    if not host:
        raise UserInputError(
            "the MLflow connection has no host: set it to the tracking server, e.g. "
            "http://mlflow:5000"
        )
    scheme, _, rest = host.rpartition("://")
    base = f"{scheme or schema or 'http'}://{rest.rstrip('/')}"
    if port and not _has_port(rest):
        base += f":{port}"
    return f"{base}/{path.strip('/')}" if path and path.strip("/") else base


def _has_port(authority: str) -> bool:
    host = authority.split("/", 1)[0]
    return ":" in host.rsplit("]", 1)[-1]


def conn_ids_from_env() -> tuple[str, str]:
    """The connection ids the plugin uses (`TFOPT_S3_CONN_ID`, `TFOPT_MLFLOW_CONN_ID`)."""
    return (
        os.environ.get("TFOPT_S3_CONN_ID") or DEFAULT_S3_CONN_ID,
        os.environ.get("TFOPT_MLFLOW_CONN_ID") or DEFAULT_MLFLOW_CONN_ID,
    )
