"""The real Airflow services on the embedded default's state, with the MLflow UI beside them: one command starts them,
one stops them.

    python -m orchestration.services start [--host 127.0.0.1] [--port 8080] [--mlflow-port 5000]   # make airflow
    python -m orchestration.services stop                                                         # make airflow-stop

``start`` runs the API server (UI and REST), the scheduler, the DAG processor and the triggerer as separate
``airflow`` processes, and ``mlflow server`` on the same tracking store, each in its own process group with its log
in ``<state>/logs/services/``; it returns once the API server reports every component healthy and MLflow answers,
printing the addresses and the login. Everything listens on 127.0.0.1 unless ``--host`` says otherwise: a laptop's
Airflow is not for the whole network. A port in use is refused before anything starts. ``stop`` ends every process
group it started (SIGTERM, then SIGKILL), so nothing is left behind; what runs is recorded in
``<state>/services/services.json``.

The login is Airflow's simple auth manager with one admin user; its password is generated once into the state's
password file and printed at each start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlsteps.errors import EXIT_USER_ERROR, ConfigError
from orchestration.embedded import prepare_airflow
from orchestration.settings import Settings, get_settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MLFLOW_PORT = 5000
ADMIN_USER = "admin"
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
HEALTHY_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
START_TIMEOUT_SECONDS = 240
STOP_GRACE_SECONDS = 30
POLL_SECONDS = 0.5
LOG_TAIL_CHARACTERS = 3000


@dataclass(frozen=True)
class Running:
    """What ``start`` launched: addresses, and the process group of each service (its leader's pid)."""

    host: str
    port: int
    mlflow_port: int
    pids: dict[str, int]
    logs: str

    @property
    def url(self) -> str:
        """The UI and REST API."""
        return f"http://{_address(self.host)}:{self.port}"

    @property
    def mlflow_url(self) -> str:
        """The MLflow UI."""
        return f"http://{_address(self.host)}:{self.mlflow_port}"


def _address(host: str) -> str:
    """Where a browser on this machine reaches a server bound to ``host``."""
    return DEFAULT_HOST if host in ("0.0.0.0", "::", "") else host


def state_file(settings: Settings) -> Path:
    """The record of the running services."""
    return settings.state_dir / "services" / "services.json"


def passwords_file(settings: Settings) -> Path:
    """The simple auth manager's password file of this state."""
    return settings.state_dir / "airflow" / "simple_auth_manager_passwords.json.generated"


def admin_password(settings: Settings) -> str:
    """The admin's password, generated once into the password file (the auth manager keeps what it finds there)."""
    path = passwords_file(settings)
    passwords = json.loads(path.read_text()) if path.exists() else {}
    if ADMIN_USER not in passwords:
        passwords[ADMIN_USER] = secrets.token_urlsafe(12)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(passwords))
        path.chmod(0o600)
    return passwords[ADMIN_USER]


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """Refuse a port something already listens on, naming it and how to choose another.

    Raises:
        ConfigError: the port is in use (or cannot be bound on that address).
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"{what}: port {port} on {host} is in use ({exc.strerror}); stop what listens there, or choose "
                f"another port with {option}"
            ) from None


def read_running(settings: Settings) -> Running | None:
    """The recorded services, or None when none were started (or the record is gone)."""
    path = state_file(settings)
    return Running(**json.loads(path.read_text())) if path.exists() else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def services_env(settings: Settings, host: str, port: int, mlflow_port: int) -> dict[str, str]:
    """The environment of every service: the local Airflow's, bound to ``host``, its tasks reaching the execution API
    on this machine, the models page linking the MLflow UI."""
    env = prepare_airflow(settings)
    local = _address(host)
    return {
        **os.environ,
        **env,
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://{local}:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{local}:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
        "ML_MLFLOW_UI_URL": f"http://{local}:{mlflow_port}",
        # The services start `airflow ...` subprocesses of their own: this environment's bin comes first.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _commands(settings: Settings, host: str, port: int, mlflow_port: int) -> dict[str, list[str]]:
    airflow = [sys.executable, "-m", "airflow"]
    mlflow_server = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.mlflow_tracking_uri,
        "--host",
        host,
        "--port",
        str(mlflow_port),
        "--workers",
        "1",
    ]
    return {
        "api-server": [*airflow, "api-server", "--host", host, "--port", str(port)],
        **{component: [*airflow, component] for component in AIRFLOW_COMPONENTS[1:]},
        "mlflow": mlflow_server,
    }


def _log_tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-LOG_TAIL_CHARACTERS:]


def _get(url: str) -> bytes | None:
    """The body of a 2xx answer; None while the server does not answer (or answers an error)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read()
    except (urllib.error.URLError, OSError):
        return None


def _get_json(url: str) -> Any | None:
    body = _get(url)
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _unhealthy(running: Running) -> list[str]:
    """What is not up yet: Airflow components by the API server's health report, and MLflow."""
    health = _get_json(f"{running.url}/api/v2/monitor/health")
    waiting = (
        ["api-server"]
        if not isinstance(health, dict)
        else [name for name in HEALTHY_COMPONENTS if (health.get(name) or {}).get("status") != "healthy"]
    )
    if _get(f"{running.mlflow_url}/health") is None:  # answers a plain OK
        waiting.append("mlflow")
    return waiting


def _wait_healthy(running: Running, processes: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while (waiting := _unhealthy(running)) and time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {process.returncode} while starting; its log ({logs / f'{name}.log'}) "
                    f"ends with:\n{_log_tail(logs / f'{name}.log')}"
                )
        time.sleep(POLL_SECONDS)
    if waiting:
        raise RuntimeError(f"not healthy after {START_TIMEOUT_SECONDS} s: {', '.join(waiting)}; the logs are in {logs}")


def start(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    mlflow_port: int = DEFAULT_MLFLOW_PORT,
    tuning: dict[str, str] | None = None,
) -> Running:
    """Start the services detached and wait until all are healthy; a failed start stops what it started.

    ``tuning`` is Airflow configuration (``AIRFLOW__...`` variables) on top of the defaults, e.g. shorter intervals.

    Raises:
        ConfigError: the services already run for this state, or a port is in use.
        RuntimeError: a service exited or did not become healthy in time (its log's end is in the message).
    """
    running = read_running(settings)
    if running and any(_group_alive(pid) for pid in running.pids.values()):
        raise ConfigError(
            f"the services of {settings.state_dir} already run (UI {running.url}, MLflow {running.mlflow_url}); "
            "stop them first: make airflow-stop"
        )
    check_port_free(host, port, "the Airflow API server", "AIRFLOW_PORT=... (make airflow) or --port")
    check_port_free(host, mlflow_port, "the MLflow UI", "MLFLOW_PORT=... (make airflow) or --mlflow-port")
    env = {**services_env(settings, host, port, mlflow_port), **(tuning or {})}
    admin_password(settings)
    logs = settings.state_dir / "logs" / "services"
    logs.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, command in _commands(settings, host, port, mlflow_port).items():
        with (logs / f"{name}.log").open("wb") as log:
            processes[name] = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
    running = Running(host, port, mlflow_port, {name: p.pid for name, p in processes.items()}, str(logs))
    state_file(settings).parent.mkdir(parents=True, exist_ok=True)
    state_file(settings).write_text(json.dumps(asdict(running), indent=2))
    try:
        _wait_healthy(running, processes, logs)
    except BaseException:
        stop(settings)
        raise
    return running


def _process_tree() -> dict[int, tuple[int, int]]:
    """Every process of this machine: pid -> (parent pid, process group), from ``/proc``."""
    tree = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
            tree[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return tree


def _members(pgids: set[int]) -> set[int]:
    """The processes of these groups and all their descendants, in whatever group: a task's supervisor puts the task
    in a group of its own, and a step runs in a session of its own."""
    tree = _process_tree()
    members = {pid for pid, (_, pgid) in tree.items() if pgid in pgids}
    while children := {pid for pid, (parent, _) in tree.items() if parent in members and pid not in members}:
        members |= children
    return members


def _signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: set[int], seconds: float) -> set[int]:
    """Wait until these processes ended; those still there."""
    deadline = time.monotonic() + seconds
    while True:
        _reap()
        alive = pids & set(_process_tree())
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(POLL_SECONDS)


def stop(settings: Settings) -> list[str]:
    """Stop every recorded service with all its processes (the tasks and steps they run included): SIGTERM, then
    SIGKILL after a grace period. Model servers a deploy started are not the services' processes: they keep serving
    (``make stop-server`` stops them).

    Returns:
        The services that were still running.
    """
    running = read_running(settings)
    if running is None:
        return []
    alive = sorted(name for name, pgid in running.pids.items() if _group_alive(pgid))
    members = _members(set(running.pids.values()))
    _signal_all(members, signal.SIGTERM)
    left = _wait_gone(members, STOP_GRACE_SECONDS)
    left |= _members(set(running.pids.values())) - members  # anything started while stopping
    _signal_all(left, signal.SIGKILL)
    _wait_gone(left, STOP_GRACE_SECONDS)
    state_file(settings).unlink(missing_ok=True)
    return alive


def _reap() -> None:
    """Collect exited children of this process: a zombie still shows in ``/proc``."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def main(argv: list[str] | None = None) -> int:
    """``start`` or ``stop`` the services of this state."""
    parser = argparse.ArgumentParser(prog="python -m orchestration.services", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    starting = sub.add_parser("start", help="start the API server, scheduler, DAG processor, triggerer and MLflow UI")
    starting.add_argument("--host", default=os.environ.get("AIRFLOW_HOST") or DEFAULT_HOST, help="address to bind")
    starting.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT") or DEFAULT_PORT))
    starting.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLFLOW_PORT") or DEFAULT_MLFLOW_PORT))
    sub.add_parser("stop", help="stop every service this state started")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "stop":
        stopped = stop(settings)
        print(f"stopped: {', '.join(stopped)}" if stopped else "no services were running")
        return 0
    try:
        running = start(settings, args.host, args.port, args.mlflow_port)
    except ConfigError as exc:
        print(f"not started: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RuntimeError as exc:
        print(f"not started: {exc}", file=sys.stderr)
        return 1
    print(
        f"Airflow UI and REST API: {running.url}  (user {ADMIN_USER}, password {admin_password(settings)})\n"
        f"MLflow UI:               {running.mlflow_url}\n"
        f"models page:             {running.url}/plugin/models\n"
        f"logs:                    {running.logs}\n"
        "stop them all:           make airflow-stop"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
