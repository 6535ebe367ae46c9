"""One-time set-up the services need: the S3 bucket and Airflow's migrated metadata database."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from infra.local.processes import log_tail, say
from infra.local.stack_config import (
    BIN,
    REGION,
    StackConfig,
    StackError,
    ensure_credentials,
    read_json,
    stack_env,
)

BENCHMARK_POOL = ("tfopt_benchmark", "1", "one benchmark at a time, so variants never compete")


def ensure_bucket(config: StackConfig, env: dict[str, str], timeout_s: float = 30) -> None:
    """Create the bucket unless it exists; also proves the generated credentials work."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client(
        "s3",
        endpoint_url=config.s3_url,
        config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.head_bucket(Bucket=config.bucket)
            say(f"  bucket s3://{config.bucket}: exists")
            return
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 403:
                raise StackError(
                    f"SeaweedFS rejected the credentials of {config.stack_dir / 's3.json'}"
                ) from exc
            if status == 404 and _create_bucket(client, config.bucket):
                return
            last: Exception = exc
        except BotoCoreError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise StackError(f"could not create bucket {config.bucket!r}: {last}")
        time.sleep(0.5)


def _create_bucket(client: Any, bucket: str) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.create_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError):  # the filer may still be starting: the caller retries
        return False
    say(f"  bucket s3://{bucket}: created")
    return True


def migrate_airflow_db(
    sql_alchemy_conn: str, marker: Path, env: dict[str, str], log_path: Path
) -> bool:
    """`airflow db migrate` plus the benchmark pool, once per Airflow version.

    Args:
        sql_alchemy_conn: the metadata database (SQLite file or PostgreSQL).
        marker: a file that records the migrated version beside the database.
        env: the stack's environment.
        log_path: where the commands' output goes.

    Returns:
        False when the database was already up to date, True when it was migrated now.
    """
    version = importlib.metadata.version("apache-airflow")
    stamp = f"{version} pool={BENCHMARK_POOL[0]}"
    if marker.exists() and marker.read_text().strip() == stamp:
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **env,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for args in (["db", "migrate"], ["pools", "set", *BENCHMARK_POOL]):
        with open(log_path, "ab") as log:
            result = subprocess.run(
                [str(BIN / "airflow"), *args],
                cwd=marker.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(
                f"`airflow {' '.join(args)}` failed ({result.returncode}); last lines of "
                f"{log_path}:\n{log_tail(log_path)}"
            )
    marker.write_text(stamp + "\n")
    return True


def _sqlite(database: Path) -> tuple[str, Path]:
    return f"sqlite:///{database}", database.with_name(database.name + ".tfopt-migrated")


def prepare_airflow(config: StackConfig, env: dict[str, str]) -> None:
    """The stack's Airflow metadata database (SQLite, or the cluster's), migrated, with the pool."""
    started = time.monotonic()
    conn = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if conn.startswith("sqlite"):
        conn, marker = _sqlite(config.airflow_home / "airflow.db")
        if not (config.airflow_home / "airflow.db").exists():
            marker.unlink(missing_ok=True)
    else:
        marker = config.stack_dir / "postgres" / "tfopt-migrated"
    if migrate_airflow_db(conn, marker, env, config.log_dir / "airflow-migrate.log"):
        say(f"  airflow: database migrated, pool set ({time.monotonic() - started:.1f} s)")
    else:
        say(f"  airflow: database ready ({conn.split('@')[-1]})")


def dags_test_db(config: StackConfig) -> str:
    """A metadata database of its own for `airflow dags test`, as a SQLAlchemy URL.

    `airflow dags test` needs no scheduler, and on the stack's database a running scheduler
    (`make up`) would also queue the test run's tasks, which would then run twice.
    """
    database = config.airflow_home / "dags-test" / "airflow.db"
    conn, marker = _sqlite(database)
    if not database.exists():
        marker.unlink(missing_ok=True)
    env = stack_env(config, ensure_credentials(config))
    migrate_airflow_db(conn, marker, env, config.log_dir / "airflow-migrate.log")
    return conn


def airflow_login(config: StackConfig) -> tuple[str, str] | None:
    """The simple auth manager's generated (user, password), once Airflow has written it."""
    passwords = read_json(config.airflow_home / "simple_auth_manager_passwords.json.generated")
    if not passwords:
        return None
    user = "admin" if "admin" in passwords else sorted(passwords)[0]
    return user, str(passwords[user])
