"""The embedded local stack: S3, MLflow and Airflow (standalone or distributed) in one folder.

    python infra/local/stack.py up [--airflow]   S3 + MLflow (+ `airflow standalone`, SQLite)
    python infra/local/stack.py up --cluster     S3 + MLflow + PostgreSQL + Redis + Airflow's
                                                 api-server, scheduler, dag-processor, triggerer
                                                 and two Celery workers (queues default, gpu)
    python infra/local/stack.py status [--json]  what runs where (pid, port, URL, health, memory)
    python infra/local/stack.py env              the `export VAR=value` lines (also in stack.env)
    python infra/local/stack.py down             stop every service of both modes, then prove
                                                 that no process the stack spawned survives

All state lives under TFOPT_STACK_DIR (default <repo>/.stack): data, logs/, run/*.pid, the S3
credentials (s3.json), mlflow.db, airflow/ (AIRFLOW_HOME), postgres/, redis/ and stack.env, which
clients source. Ports: TFOPT_S3_PORT (8333; SeaweedFS also takes the next 9 ports),
TFOPT_MLFLOW_PORT (5000), TFOPT_AIRFLOW_PORT (8080; log servers take the next 3),
TFOPT_POSTGRES_PORT (5432) and TFOPT_REDIS_PORT (6379), cluster mode only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `infra.local` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from infra.local.bootstrap import airflow_login, dags_test_db, ensure_bucket, prepare_airflow
from infra.local.cluster import CLUSTER_SERVICES, cluster_services, ensure_database, init_postgres
from infra.local.processes import (
    kill_survivors,
    members,
    port_free,
    rss_mb,
    running_pid,
    say,
    spawn,
    stop_services,
    wait_healthy,
)
from infra.local.services import Service, standalone_airflow, storage_services
from infra.local.stack_config import (
    CLUSTER,
    STANDALONE,
    StackConfig,
    StackError,
    cluster_env,
    ensure_cluster_secret,
    ensure_credentials,
    private_dir,
    read_env_file,
    read_json,
    recorded_mode,
    render_env,
    stack_env,
    write_env_file,
)

__all__ = ["StackConfig", "StackError", "main", "read_env_file"]

SERVICE_ORDER = ("seaweedfs", "mlflow", "airflow", *CLUSTER_SERVICES)
STOP_WAVES = (
    tuple(name for name in SERVICE_ORDER if name.startswith(("airflow", "worker-"))),
    ("mlflow", "redis", "postgres"),
    ("seaweedfs",),
)
MODE_SERVICES = {
    STANDALONE: ("seaweedfs", "mlflow", "airflow"),
    CLUSTER: ("seaweedfs", "mlflow", *CLUSTER_SERVICES),
}


def build_services(config: StackConfig, env: dict[str, str]) -> dict[str, Service]:
    """Every service of both modes, in start order."""
    services = [*storage_services(config), standalone_airflow(config, env)]
    services += cluster_services(config, env)
    return {service.name: service for service in services}


def mode_env(config: StackConfig, mode: str) -> dict[str, str]:
    credentials = ensure_credentials(config)
    if mode == CLUSTER:
        return cluster_env(config, credentials, ensure_cluster_secret(config))
    return stack_env(config, credentials)


# --------------------------------------------------------------------------- steps of `up`


def _running(config: StackConfig, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if running_pid(config, name)]


def choose_mode(config: StackConfig, *, cluster: bool, with_airflow: bool) -> str:
    """The mode `up` works in; refuses to mix standalone Airflow with the cluster."""
    running_cluster = _running(config, CLUSTER_SERVICES)
    if cluster and running_pid(config, "airflow"):
        raise StackError("`airflow standalone` runs in this stack dir: `make down` first")
    if with_airflow and running_cluster:
        raise StackError(
            f"the cluster runs in this stack dir ({', '.join(running_cluster)}): `make down` first"
        )
    return CLUSTER if cluster or running_cluster else STANDALONE


def _prepare(config: StackConfig, mode: str) -> dict[str, str]:
    """Create the stack dir layout, credentials, stack.json and stack.env; return the env."""
    private_dir(config.stack_dir)
    for folder in (config.run_dir, config.log_dir, config.airflow_home):
        folder.mkdir(parents=True, exist_ok=True)
    if mode == CLUSTER:
        (config.stack_dir / "redis").mkdir(exist_ok=True)
    _check_recorded(config)
    env = mode_env(config, mode)
    record = {**config.to_dict(), "mode": mode}
    (config.stack_dir / "stack.json").write_text(json.dumps(record, indent=2) + "\n")
    write_env_file(config, env)
    return env


def _check_recorded(config: StackConfig) -> None:
    """Refuse to change ports or bucket under services that run with the recorded ones."""
    recorded = read_json(config.stack_dir / "stack.json")
    wanted = config.to_dict()
    changed = sorted(
        k for k in wanted if k != "stack_dir" and recorded.get(k, wanted[k]) != wanted[k]
    )
    running = _running(config, SERVICE_ORDER)
    if changed and running:
        details = ", ".join(f"{k} {recorded[k]} -> {wanted[k]}" for k in changed)
        raise StackError(
            f"{', '.join(running)} run(s) in {config.stack_dir} with other settings ({details}); "
            "run `stack.py down` first, or unset the variable to keep the recorded value"
        )


def _start(service: Service, config: StackConfig, env: dict[str, str]) -> tuple[int, float]:
    """Start `service` unless it already runs; return its session leader and start time."""
    leader = running_pid(config, service.name)
    if leader is None:
        started = time.monotonic()
        return spawn(service, config, env).pid, started
    state = "healthy" if service.healthy() else "not healthy yet, waiting"
    say(f"  {service.name}: already running (pid {leader}), {state}")
    return leader, time.monotonic()


def _start_all(
    services: list[Service], config: StackConfig, env: dict[str, str], timeout_s: float | None
) -> None:
    """Start the services together, then wait until each one is healthy."""
    started = [(service, *_start(service, config, env)) for service in services]
    for service, leader, since in started:
        _report_healthy(service, wait_healthy(service, config, leader, timeout_s, since))


def _report_healthy(service: Service, seconds: float) -> None:
    say(f"  {service.name}: healthy at {service.url} ({seconds:.1f} s)")


def _start_cluster_core(
    services: dict[str, Service], config: StackConfig, env: dict[str, str], timeout_s: float | None
) -> None:
    """PostgreSQL (initialised once, with the `airflow` database) and Redis."""
    if init_postgres(config):  # also lets PostgreSQL's user into the stack dir
        say(f"  postgres: initialised {config.stack_dir / 'postgres'}")
    _start_all([services["postgres"], services["redis"]], config, env, timeout_s)
    if ensure_database(config):
        say("  postgres: database airflow created")


# --------------------------------------------------------------------------- commands


def up(
    config: StackConfig,
    *,
    with_airflow: bool = False,
    cluster: bool = False,
    timeout_s: float | None = None,
) -> None:
    """Start S3, the bucket, MLflow and Airflow's database (and Airflow, standalone or cluster)."""
    started = time.monotonic()
    say(f"stack dir {config.stack_dir}")
    mode = choose_mode(config, cluster=cluster, with_airflow=with_airflow)
    env = _prepare(config, mode)
    services = build_services(config, env)
    _start_all([services["seaweedfs"]], config, env, timeout_s)
    ensure_bucket(config, env)
    mlflow = services["mlflow"]
    mlflow_leader, mlflow_started = _start(mlflow, config, env)
    if mode == CLUSTER:
        _start_cluster_core(services, config, env, timeout_s)
    prepare_airflow(config, env)  # while MLflow boots (~13 s)
    seconds = wait_healthy(mlflow, config, mlflow_leader, timeout_s, mlflow_started)
    _report_healthy(mlflow, seconds)
    if mode == CLUSTER and cluster:
        airflow = [services[name] for name in CLUSTER_SERVICES if name not in ("postgres", "redis")]
        _start_all(airflow, config, env, timeout_s)
    elif with_airflow:
        _start_all([services["airflow"]], config, env, timeout_s)
    login = airflow_login(config)
    if login and (with_airflow or cluster):
        say(f"  airflow: UI {config.airflow_url}  user {login[0]}  password {login[1]}")
    say(f"up ({mode}) in {time.monotonic() - started:.1f} s; use it with: source {config.env_file}")


def down(config: StackConfig, names: list[str] | None = None) -> bool:
    """Stop the services (default: all, both modes); then check that nothing spawned survives.

    Returns:
        True when no process the stack spawned is left (always checked after a full `down`).
    """
    services = build_services(config, {})
    stopped = []
    for wave in STOP_WAVES:  # Airflow first, then what it uses, S3 last
        chosen = [services[name] for name in wave if not names or name in names]
        stopped += stop_services(chosen, config)
    say(f"stopped: {', '.join(stopped)}" if stopped else f"nothing runs in {config.stack_dir}")
    if names:
        return True
    found = kill_survivors(config)
    for pid, command in found:
        say(f"  killed a survivor the stack had spawned: pid {pid}: {command}")
    say(f"no process spawned by {config.stack_dir} is left (checked every process in /proc)")
    return True


def service_status(config: StackConfig) -> list[dict[str, Any]]:
    """One row per service of the recorded mode (and any other that runs)."""
    rows = []
    shown = MODE_SERVICES[recorded_mode(config)]
    for name, service in build_services(config, {}).items():
        leader = running_pid(config, name)
        if name not in shown and leader is None:
            continue
        pids = members(leader, config) if leader else []
        port = service.port
        rows.append(
            {
                "service": name,
                "running": leader is not None,
                "healthy": bool(leader) and service.healthy(),
                "pid": leader,
                "processes": len(pids),
                "rss_mb": round(rss_mb(pids)),
                "port": port,
                "url": service.url,
                "port_taken_by_other": leader is None and port is not None and not port_free(port),
            }
        )
    return rows


def status(config: StackConfig, *, as_json: bool = False) -> int:
    """Print what runs where; exit status 1 when a running service is not healthy."""
    rows = service_status(config)
    mode = recorded_mode(config)
    if as_json:
        say(json.dumps({"stack": config.to_dict(), "mode": mode, "services": rows}, indent=2))
    else:
        say(f"stack dir {config.stack_dir}  mode {mode}  (env: {config.env_file})")
        for row in rows:
            if row["running"]:
                state = "healthy" if row["healthy"] else "NOT HEALTHY"
                detail = f"pid {row['pid']:<7} {row['processes']} proc  {row['rss_mb']:>5} MB"
            else:
                state = "stopped"
                detail = "port taken by another process" if row["port_taken_by_other"] else ""
            say(f"  {row['service']:<21} {state:<11} {row['url']:<30} {detail}".rstrip())
    return 1 if any(row["running"] and not row["healthy"] for row in rows) else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stack.py", description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start the stack (idempotent)")
    up_parser.add_argument("--airflow", action="store_true", help="also run `airflow standalone`")
    up_parser.add_argument(
        "--cluster", action="store_true", help="distributed Airflow: PostgreSQL, Redis, Celery"
    )
    up_parser.add_argument("--timeout", type=float, help="seconds to wait for each service")
    down_parser = commands.add_parser("down", help="stop what `up` started (both modes)")
    down_parser.add_argument(
        "services", nargs="*", metavar="SERVICE", help=f"only these of {', '.join(SERVICE_ORDER)}"
    )
    status_parser = commands.add_parser("status", help="what runs where")
    status_parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("env", help="print the `export VAR=value` lines of stack.env")
    commands.add_parser(
        "dags-test-db", help="prepare a private Airflow database for `airflow dags test`; print it"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    config = StackConfig.load()
    if args.command == "up":
        if args.airflow and args.cluster:
            raise StackError("choose one of --airflow (standalone) and --cluster")
        up(config, with_airflow=args.airflow, cluster=args.cluster, timeout_s=args.timeout)
    elif args.command == "down":
        down(config, args.services)
    elif args.command == "status":
        return status(config, as_json=args.json)
    elif args.command == "dags-test-db":
        sys.stdout.write(dags_test_db(config) + "\n")
    else:
        sys.stdout.write(render_env(mode_env(config, recorded_mode(config))))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = sorted(set(getattr(args, "services", None) or []) - set(SERVICE_ORDER))
    if unknown:
        parser.error(f"unknown service(s) {', '.join(unknown)}; choose from {SERVICE_ORDER}")
    try:
        return _run(args)
    except StackError as exc:
        sys.stderr.write(f"stack.py {args.command}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; services already started keep running (stack.py down)\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
