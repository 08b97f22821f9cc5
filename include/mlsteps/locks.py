"""Advisory locks that serialize the registry moves and deploys of one model across processes and machines.

MLflow's registry has no compare-and-set on aliases, so "move ``champion`` only if it still points where evaluation
saw it" is made atomic by holding a lock around the check and the move. The lock lives in storage every writer of
the registry reaches:

- on S3 it is an object created with a conditional write (``PutObject`` with ``If-None-Match: *``): of two
  writers exactly one creates it. It records its holder and when it was taken; a lock older than its lease
  (a crashed holder) is taken over with ``If-Match`` on its ETag, so of two takers again exactly one wins.
- on a local disk it is ``flock`` on a file: the kernel releases it when the holder exits, however it exits, so a
  local lock never goes stale. The file records the holder for the messages.

Where the locks live (``lock_root``): ``$MLSTEPS_LOCK_ROOT`` when set; beside the SQLite database for a SQLite
registry (everyone who writes it shares that disk); else ``<artifact root>/locks`` for a run root laid out as
``<artifact root>/runs/<dag>/<run>``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from mlsteps import results
from mlsteps.data import storage
from mlsteps.errors import ConfigError

LOCK_ROOT_ENV_VAR = "MLSTEPS_LOCK_ROOT"
POLL_SECONDS = 0.2
# S3 answers 412 when a condition fails, and 409 when a concurrent conditional write to the same key wins the race.
_LOST_RACE_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}

log = logging.getLogger(__name__)


class LockTimeout(RuntimeError):
    """Another process held the lock for longer than this one could wait; a retry later may succeed."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: enough to find the process and to judge whether it is still alive."""

    owner: str
    host: str
    pid: int
    acquired_at: str
    token: str

    @classmethod
    def me(cls, owner: str) -> Holder:
        """A holder record for this process."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        return cls(owner, socket.gethostname(), os.getpid(), now, uuid.uuid4().hex)

    def age_s(self) -> float:
        """Seconds since the lock was taken (by the holder's clock: leases are far longer than clock skew)."""
        return (datetime.now(UTC) - datetime.fromisoformat(self.acquired_at)).total_seconds()

    def describe(self) -> str:
        return f"{self.owner} (pid {self.pid} on {self.host}), held for {self.age_s():.0f} s since {self.acquired_at}"


def _parse_holder(data: bytes) -> Holder | None:
    """The holder a lock records; None while a new holder has not written itself yet."""
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None


def lock_root(run_root: str) -> str:
    """The folder (path or ``s3://`` prefix) that holds the locks of the registry this run writes to.

    Raises:
        ConfigError: the registry is an MLflow server, ``$MLSTEPS_LOCK_ROOT`` is unset and the run root is not
            under an artifact root's ``runs/`` folder, so no place shared by every writer is known.
    """
    explicit = os.environ.get(LOCK_ROOT_ENV_VAR)
    if explicit:
        return explicit
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if tracking_uri.startswith("sqlite:///"):
        return f"{tracking_uri.removeprefix('sqlite:///')}.locks"
    runs = storage.parent(storage.parent(storage.parent(run_root)))
    if runs.rstrip("/").endswith("/runs"):
        return storage.join(storage.parent(runs), "locks")
    raise ConfigError(
        f"no shared place for the registry's locks: MLFLOW_TRACKING_URI is {tracking_uri!r} and the run root "
        f"{run_root} is not <artifact root>/runs/<dag>/<run>; set {LOCK_ROOT_ENV_VAR} to an s3:// prefix (or a "
        "folder) that every process writing this registry reaches"
    )


def lock_uri(root: str, model_name: str, purpose: str) -> str:
    """The lock of one model for one purpose (``champion``, ``deploy-local``)."""
    return storage.join(root, results.safe_name(model_name), f"{purpose}.lock")


def _timeout(uri: str, holder: Holder | None, waited_s: float, how_to_clear: str) -> LockTimeout:
    who = holder.describe() if holder else "a process that has not recorded itself yet"
    return LockTimeout(f"waited {waited_s:.0f} s for the lock {uri}, held by {who}; {how_to_clear}")


@contextlib.contextmanager
def _local_lock(uri: str, owner: str, wait_s: float) -> Iterator[Holder]:
    path = storage.local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _parse_holder(path.read_bytes())
                    pid = holder.pid if holder else "<pid>"
                    raise _timeout(
                        uri,
                        holder,
                        wait_s,
                        f"a local lock is released when its holder exits: if that process hangs, stop it "
                        f"(kill {pid}) and retry",
                    ) from None
                time.sleep(POLL_SECONDS)
        me = Holder.me(owner)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(asdict(me)).encode(), 0)
        try:
            yield me
        finally:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # closing releases the flock


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _s3_put(client: Any, bucket: str, key: str, holder: Holder, condition: dict[str, str]) -> str | None:
    """Write the lock object if the condition holds; its ETag, or None when another writer won."""
    try:
        reply = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(asdict(holder)).encode(), **condition)
    except client.exceptions.ClientError as exc:
        if _error_code(exc) in _LOST_RACE_CODES:
            return None
        raise
    return reply["ETag"]


def _s3_current(client: Any, bucket: str, key: str) -> tuple[Holder | None, str] | None:
    """The recorded holder and ETag of the lock object; None when there is none."""
    try:
        reply = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None
    return _parse_holder(reply["Body"].read()), reply["ETag"]


def _s3_acquire(client: Any, uri: str, holder: Holder, wait_s: float, lease_s: float) -> str:
    """Create the lock object, or take over an expired one; the ETag of the lock now held."""
    bucket, key = storage.split_s3(uri)
    deadline = time.monotonic() + wait_s
    while True:
        etag = _s3_put(client, bucket, key, holder, {"IfNoneMatch": "*"})
        if etag is not None:
            return etag
        current = _s3_current(client, bucket, key)
        if current is None:  # released between our write and our read
            continue
        previous, previous_etag = current
        if previous is not None and previous.age_s() > lease_s:
            etag = _s3_put(client, bucket, key, holder, {"IfMatch": previous_etag})
            if etag is not None:
                log.warning("took over the expired lock %s from %s", uri, previous.describe())
                return etag
        if time.monotonic() >= deadline:
            raise _timeout(
                uri,
                previous,
                wait_s,
                f"it expires {lease_s:.0f} s after it was taken; if its holder is gone, delete it now "
                f"(aws s3 rm {uri}) and retry",
            )
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def _s3_lock(uri: str, owner: str, wait_s: float, lease_s: float) -> Iterator[Holder]:
    client = storage.s3_client()
    holder = Holder.me(owner)
    with storage.s3_access(uri):
        etag = _s3_acquire(client, uri, holder, wait_s, lease_s)
    try:
        yield holder
    finally:
        bucket, key = storage.split_s3(uri)
        with storage.s3_access(uri):
            current = _s3_current(client, bucket, key)
            if current is not None and current[1] == etag:
                client.delete_object(Bucket=bucket, Key=key)
            else:
                log.warning("lock %s was taken over while %s held it past its %.0f s lease", uri, owner, lease_s)


@contextlib.contextmanager
def held(uri: str, owner: str, *, wait_s: float, lease_s: float) -> Iterator[Holder]:
    """Hold the lock at ``uri`` for the ``with`` block, waiting up to ``wait_s`` for another holder to let go.

    Args:
        uri: the lock (``lock_uri``): an ``s3://`` object or a local file.
        owner: who takes it (a DAG run id or ``cli``), shown to whoever waits for it.
        wait_s: how long to wait for the current holder.
        lease_s: (S3) age after which a lock counts as abandoned by a crashed holder and is taken over; longer
            than the block ever runs. A local lock needs none: it is released when its holder exits.

    Yields:
        This holder's record.

    Raises:
        LockTimeout: still held by another after ``wait_s``; the message names the holder, its age and how to
            clear the lock if its holder is gone.
    """
    lock = _s3_lock(uri, owner, wait_s, lease_s) if storage.is_s3(uri) else _local_lock(uri, owner, wait_s)
    with lock as holder:
        yield holder
