"""The stack's processes: one session per service, started, found, stopped, and proven gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from infra.local.services import Service
from infra.local.stack_config import HOST, SPAWN_MARKER, StackConfig, StackError

LOG_TAIL_LINES = 30
PROGRESS_EVERY_S = 10.0
HAS_PROC = Path("/proc/self/stat").exists()
START_MARK = "stack.py up ==="


def say(message: str = "") -> None:
    """The CLI's output layer: one line to stdout, flushed (progress must show up live)."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


@dataclass(frozen=True)
class ProcInfo:
    """What /proc/<pid>/stat says about a process."""

    pid: int
    state: str
    pgid: int
    sid: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def proc_info(pid: int) -> ProcInfo | None:
    """State, process group and session of a process, None when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return ProcInfo(pid=pid, state=fields[0], pgid=int(fields[2]), sid=int(fields[3]))


def all_processes() -> Iterator[ProcInfo]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            info = proc_info(int(entry.name))
            if info is not None:
                yield info


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def belongs_to(pid: int, config: StackConfig) -> bool:
    """The process was started by this stack dir (its environment names it)."""
    return f"TFOPT_STACK_DIR={config.stack_dir}".encode() in _environ(pid)


def spawned_by(pid: int, config: StackConfig) -> bool:
    """The process is a service of this stack dir or one of its descendants.

    Its environment carries the spawn marker, or, where a process title rewrite (setproctitle:
    Airflow, Celery) has overwritten the environment, it still works in the folder the stack
    started it in: the stack dir itself, or the data directory of PostgreSQL or Redis.
    """
    if f"{SPAWN_MARKER}={config.stack_dir}".encode() in _environ(pid):
        return True
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return cwd in (config.stack_dir, config.stack_dir / "postgres", config.stack_dir / "redis")


def members(leader: int, config: StackConfig) -> list[int]:
    """Live processes of this stack in the process group or the session led by `leader`.

    Each service starts in a session of its own (pid = pgid = sid); Airflow moves task processes
    into process groups of their own, but they stay in the session.
    """
    if not HAS_PROC:
        try:
            os.killpg(leader, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [leader]
    return [
        info.pid
        for info in all_processes()
        if info.alive
        and leader in (info.pgid, info.sid)
        and (belongs_to(info.pid, config) or spawned_by(info.pid, config))
    ]


def pid_file(config: StackConfig, name: str) -> Path:
    return config.run_dir / f"{name}.pid"


def running_pid(config: StackConfig, name: str) -> int | None:
    """The session leader of a running service from its PID file; stale files are removed."""
    path = pid_file(config, name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if members(pid, config):
        return pid
    path.unlink(missing_ok=True)
    return None


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def check_ports(service: Service) -> None:
    for port, what in ((service.port, service.name), *service.extra_ports):
        if port is not None and not port_free(port):
            raise StackError(
                f"port {port} ({what}) is already in use by another process; set "
                f"{service.port_var} to another port (or stop what listens there: "
                f"`ss -ltnp 'sport = :{port}'`)"
            )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(f"    {line}" for line in text[-lines:])


def log_since_start(path: Path) -> str:
    """The part of a service log written since its last start by `spawn`."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text.rsplit(START_MARK, 1)[-1]


def spawn(service: Service, config: StackConfig, env: dict[str, str]) -> subprocess.Popen:
    """Start `service` in its own session / process group; write its PID file."""
    check_ports(service)
    log_path = config.log_dir / f"{service.name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {START_MARK}\n".encode())
        log.flush()
        process = subprocess.Popen(
            service.command,
            cwd=config.stack_dir,
            env={**os.environ, **env, **service.env, SPAWN_MARKER: str(config.stack_dir)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file(config, service.name).write_text(f"{process.pid}\n")
    say(f"  {service.name}: started (pid {process.pid}), log {log_path}")
    return process


def wait_healthy(
    service: Service,
    config: StackConfig,
    leader: int,
    timeout_s: float | None,
    since: float | None = None,
) -> float:
    """Seconds since `since` (its spawn) until `service` is healthy; raise on exit or timeout."""
    started = since or time.monotonic()
    deadline = started + (timeout_s or service.start_timeout_s)
    next_progress = started + PROGRESS_EVERY_S
    log_path = config.log_dir / f"{service.name}.log"
    while True:
        if service.healthy():
            return time.monotonic() - started
        now = time.monotonic()
        if not members(leader, config):
            pid_file(config, service.name).unlink(missing_ok=True)
            raise StackError(
                f"{service.name} exited during start-up; last lines of {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        if now > deadline:
            stop_service(service, config)
            raise StackError(
                f"{service.name} was not healthy at {service.url} after {now - started:.0f} s "
                f"(stopped it); last lines of {log_path}:\n{log_tail(log_path)}"
            )
        if now >= next_progress:
            say(f"  {service.name}: waiting for {service.url} ({now - started:.0f} s)")
            next_progress += PROGRESS_EVERY_S
        time.sleep(0.3)


def _wait_gone(leader: int, config: StackConfig, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while members(leader, config):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def signal_session(leader: int, config: StackConfig, signum: int) -> None:
    """Signal the process group `leader` and every process of its session, wherever its group."""
    try:
        os.killpg(leader, signum)
    except ProcessLookupError:
        pass
    for pid in members(leader, config):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def stop_service(service: Service, config: StackConfig) -> bool:
    """Stop the service's session: its stop signal, SIGKILL after its timeout; False if idle."""
    leader = running_pid(config, service.name)
    if leader is None:
        return False
    started = time.monotonic()
    signal_session(leader, config, service.stop_signal)
    if not _wait_gone(leader, config, service.stop_timeout_s):
        say(f"  {service.name}: still running after {service.stop_timeout_s:.0f} s: SIGKILL")
        signal_session(leader, config, signal.SIGKILL)
        if not _wait_gone(leader, config, 10):
            raise StackError(f"{service.name} (session {leader}) survived SIGKILL")
    pid_file(config, service.name).unlink(missing_ok=True)
    say(f"  {service.name}: stopped (session {leader}) in {time.monotonic() - started:.1f} s")
    return True


def stop_services(services: list[Service], config: StackConfig) -> list[str]:
    """Stop `services` side by side (each as `stop_service`); the names of those that ran."""
    if not services:
        return []
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        stopped = list(pool.map(lambda service: stop_service(service, config), services))
    return [service.name for service, ran in zip(services, stopped, strict=True) if ran]


def _ancestors() -> set[int]:
    """This process and its parents: they may carry the marker without being the stack's."""
    chain, pid = set(), os.getpid()
    while pid > 1 and pid not in chain:
        chain.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return chain


def survivors(config: StackConfig) -> list[int]:
    """Live processes that the stack spawned (directly or not), wherever their session."""
    if not HAS_PROC:
        return []
    mine = _ancestors()
    return [
        info.pid
        for info in all_processes()
        if info.alive and info.pid not in mine and spawned_by(info.pid, config)
    ]


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120]


def kill_survivors(config: StackConfig, grace_s: float = 5.0) -> list[tuple[int, str]]:
    """SIGTERM then SIGKILL whatever the stack spawned and still runs; return what was found."""
    found = [(pid, command_line(pid)) for pid in survivors(config)]
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in survivors(config):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while survivors(config) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = survivors(config)
    if left:
        raise StackError(f"processes of {config.stack_dir} survived SIGKILL: {left}")
    return found
