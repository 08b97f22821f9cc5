"""Runtime ``local``: run a step's container command as a subprocess of the Airflow worker.

The command and environment are the ones the pod would get; only ``python`` is replaced by the worker's own
interpreter, so the subprocess sees the same installed packages. Output is streamed line by line into the task
log. A non-zero exit becomes the same exception as on Kubernetes (``failures.step_exit_error``): exit code 2 (bad
input, failed validation, failed gate) fails the task without retries; any other failure is retried. When Airflow
kills the task (timeout, cleared, marked failed), the whole process group is terminated, so no orphaned step keeps
running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from orchestration.failures import TAIL_LINES, step_exit_error


class LocalStepOperator(BaseOperator):
    """Runs ``cmds + arguments`` with ``env_vars`` added to the worker's environment.

    Args:
        step: the step the command runs, named in failure messages.
        cmds: the container entrypoint, e.g. ``["python", "-m", "mlsteps", "train"]``.
        arguments: the container arguments (templated).
        env_vars: environment of the step (templated), identical to the pod's.
        extra_arguments: appended to the rendered arguments as they are; what a mapped task expands over.
    """

    template_fields: Sequence[str] = ("arguments", "env_vars")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        step: str,
        cmds: list[str],
        arguments: list[str],
        env_vars: dict[str, str],
        extra_arguments: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.cmds = cmds
        self.arguments = arguments
        self.extra_arguments = list(extra_arguments or [])
        self.env_vars = env_vars
        self._process: subprocess.Popen[str] | None = None

    def command(self) -> list[str]:
        """The argv that runs: the container command with ``python`` mapped to this interpreter."""
        head = [sys.executable if self.cmds[0] == "python" else self.cmds[0], *self.cmds[1:]]
        return [*head, *(str(a) for a in [*self.arguments, *self.extra_arguments])]

    def execute(self, context: Any) -> None:
        """Run the step, stream its output, and translate its exit code.

        Raises:
            StepUserError: exit code 2; not retried.
            StepExitError: any other non-zero exit; retried.
        """
        argv = self.command()
        self.log.info("Running %s", " ".join(argv))
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._process = subprocess.Popen(
            argv,
            env={**os.environ, **self.env_vars},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip()
            tail.append(line)
            self.log.info("%s", line)
        code = self._process.wait()
        if code != 0:
            raise step_exit_error(self.step, code, "\n".join(tail))

    def on_kill(self) -> None:
        """Terminate the step's whole process group when Airflow kills the task."""
        if self._process and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
