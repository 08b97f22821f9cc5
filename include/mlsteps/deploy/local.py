"""Serving on this machine: one ``python -m mlsteps.serve --allow-reload`` process (127.0.0.1 by default).

The embedded default and the tests deploy here. The first roll-out starts the server detached (a session of its
own, so it outlives the deploy step and the Airflow task that ran it) and waits until it is ready; later roll-outs
switch its model through ``POST /v2/repository/models/{name}/load``, which checks the new bundle against its smoke
rows before switching, so requests keep being answered and a bad bundle never serves. The server's pid, port and
log are recorded in ``<state dir>/server.json``; its output goes to ``<state dir>/server.log``.
``MLFLOW_TRACKING_URI`` (the registry the server loads from) passes through from this process's environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlsteps.config import ServingConfig
from mlsteps.deploy import DeployFailed
from mlsteps.errors import StepError

STATE_FILE = "server.json"
LOG_FILE = "server.log"
LOG_TAIL_LINES = 30
STOP_GRACE_SECONDS = 15.0
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ServerRecord:
    """What the state file remembers of the running server."""

    pid: int
    port: int
    model_name: str
    log: str


def _is_server(pid: int) -> bool:
    """Whether ``pid`` runs a model server of this user (after a reboot the recorded pid may be anything)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or b"mlsteps.serve" in cmdline.read_bytes()


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited (a child of this process is reaped, so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError):  # not our child: the deploy step that started it has exited
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file (empty when there is none)."""
    if not path.is_file():
        return ""
    with path.open(errors="replace") as stream:
        return "".join(deque(stream, maxlen=lines)).rstrip()


class LocalTarget:
    """A ``ServingTarget`` that serves one model from a local server process.

    Args:
        model_name: registered model name the server loads.
        state_dir: folder for the state file and the server's log (created when missing).
        port: port of the server.
        host: address the server binds to and is called at.
        prediction_log: where the server logs its predictions (the drift monitor's store); None: not logged.
        ready_timeout_s: how long a start or a reload may take (download, load, the server's own smoke check).
    """

    name = "local"

    def __init__(
        self,
        model_name: str,
        state_dir: Path,
        *,
        port: int,
        host: str = "127.0.0.1",
        prediction_log: str | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.model_name = model_name
        self.state_dir = Path(state_dir)
        self.port = port
        self.host = host
        self.prediction_log = prediction_log
        self.ready_timeout_s = ready_timeout_s

    @classmethod
    def from_config(
        cls, model_name: str, serving: ServingConfig, state_dir: Path, prediction_log: str | None = None
    ) -> LocalTarget:
        """The local server as the ``serving:`` config places it (``serving.local``, the rollout timeout)."""
        return cls(
            model_name,
            state_dir,
            port=serving.local.port,
            host=serving.local.host,
            prediction_log=prediction_log,
            ready_timeout_s=serving.rollout_timeout_seconds,
        )

    @property
    def state_file(self) -> Path:
        """The state file: pid, port, model and log of the running server."""
        return self.state_dir / STATE_FILE

    @property
    def log_file(self) -> Path:
        """The server's stdout and stderr."""
        return self.state_dir / LOG_FILE

    def endpoint(self) -> str:
        """Base URL of the server."""
        return f"http://{self.host}:{self.port}"

    def current_version(self) -> int | None:
        """The version the server on the port serves, or None when no server answers there.

        Raises:
            StepError: a server answers on the port that this state folder did not start (see ``_claim_port``).
        """
        self._claim_port()
        try:
            status, body = self._request("GET", f"/v2/models/{quote(self.model_name, safe='')}", timeout=5)
        except OSError:
            return None
        versions = body.get("versions") if status == 200 else None
        return int(versions[0]) if versions else None

    def roll_out(self, version: int) -> None:
        """Serve ``version``: start a server when none answers, else reload it unless it serves ``version`` already.

        Raises:
            DeployFailed: the server refused the version (it keeps serving the old one) or did not become ready.
        """
        self._claim_port()
        if not self._answers():
            self._start(version)
        elif self.current_version() != version:
            self._reload(version)

    def roll_back(self, version: int | None) -> None:
        """Serve ``version`` again, or stop the server when nothing served before (``None``).

        Raises:
            DeployFailed: the previous version could not be served again.
        """
        if version is None:
            self.stop()
        else:
            self.roll_out(version)

    def stop(self) -> None:
        """Stop the recorded server (its whole process group) and forget it; nothing happens when none runs."""
        record = self._record()
        if record is not None and _is_server(record.pid):
            print(f"stopping the local model server (pid {record.pid})", flush=True)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(record.pid, sig)
                deadline = time.monotonic() + STOP_GRACE_SECONDS
                while not _exited(record.pid) and time.monotonic() < deadline:
                    time.sleep(_POLL_SECONDS)
                if _exited(record.pid):
                    break
        self.state_file.unlink(missing_ok=True)

    def _record(self) -> ServerRecord | None:
        if not self.state_file.is_file():
            return None
        return ServerRecord(**json.loads(self.state_file.read_text()))

    def _request(self, method: str, path: str, payload: Any = None, timeout: float = 10) -> tuple[int, dict]:
        """An HTTP call to the server: status and JSON body (``{}`` when the body is not JSON)."""
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.endpoint() + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"error": raw.decode(errors="replace")[:500]}
        return status, body if isinstance(body, dict) else {"body": body}

    def _claim_port(self) -> None:
        """Refuse a server on the port that this state folder did not start: it may serve another registry's model."""
        record = self._record()
        ours = record is not None and record.port == self.port and _is_server(record.pid)
        if not ours and self._answers():
            raise StepError(
                f"{self.endpoint()} already answers, but not with the model server started from {self.state_dir}: "
                "stop that server (a demo's: make stop-server) or set serving.local.port to a free port"
            )

    def _answers(self, path: str = "/v2/health/live") -> bool:
        try:
            return self._request("GET", path, timeout=2)[0] == 200
        except OSError:
            return False

    def _reload(self, version: int) -> None:
        print(f"local model server at {self.endpoint()}: loading {self.model_name} v{version}", flush=True)
        path = f"/v2/repository/models/{quote(self.model_name, safe='')}/load"
        try:
            status, body = self._request(
                "POST", path, {"parameters": {"version": str(version)}}, timeout=self.ready_timeout_s
            )
        except OSError as exc:
            raise DeployFailed(
                f"local model server at {self.endpoint()} did not answer the load of {self.model_name} v{version} "
                f"within {self.ready_timeout_s:.0f} s ({exc}); see {self.log_file}"
            ) from None
        if status != 200:
            reason = body.get("error") or body.get("detail") or body
            hint = " (start it with --allow-reload, or stop it)" if status in (403, 404, 405) else ""
            raise DeployFailed(
                f"local model server at {self.endpoint()} refused {self.model_name} v{version}: HTTP {status}: "
                f"{reason}{hint}; it keeps serving what it served"
            )

    def _command(self, version: int) -> list[str]:
        command = [sys.executable, "-m", "mlsteps.serve", "--allow-reload", "--model-name", self.model_name]
        command += ["--model-version", str(version), "--host", self.host, "--port", str(self.port)]
        return command + (["--prediction-log", self.prediction_log] if self.prediction_log else [])

    def _start(self, version: int) -> None:
        self.stop()  # a recorded server that no longer answers (hung, or on another port) goes first
        self.state_dir.mkdir(parents=True, exist_ok=True)
        print(f"starting the local model server for {self.model_name} v{version} at {self.endpoint()}", flush=True)
        with self.log_file.open("wb") as log:
            process = subprocess.Popen(
                self._command(version),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=os.environ.copy(),
            )
        record = ServerRecord(pid=process.pid, port=self.port, model_name=self.model_name, log=str(self.log_file))
        self.state_file.write_text(json.dumps(asdict(record), indent=2))
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._answers("/v2/health/ready"):
            code = process.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                why = f"exited with code {code}" if code is not None else f"not ready in {self.ready_timeout_s:.0f} s"
                raise DeployFailed(
                    f"local model server for {self.model_name} v{version} {why}; last lines of {self.log_file}:\n"
                    f"{log_tail(self.log_file)}"
                )
            time.sleep(_POLL_SECONDS)
        print(f"local model server ready (pid {process.pid}, log {self.log_file})", flush=True)
