"""One storage module for every step: local paths / ``file://`` URIs and ``s3://`` URIs.

S3 goes through boto3. Set ``S3_ENDPOINT_URL`` to use an S3-compatible store (MinIO, Ceph, moto); credentials
come from boto3's usual chain (environment, web identity, instance profile), never from config files.
Local writes are atomic (write to a temporary file, then rename), so a crashed step never leaves half a file
where a good artifact was. No S3 credentials, or a file where a folder belongs, is a ``StorageError`` that says
what to set or give instead: the step exits 2, as a retry would fail the same way.

Transient S3 faults are retried by botocore itself, configured once in ``s3_client`` from the environment:

- ``AWS_MAX_ATTEMPTS`` (default 12): attempts per request, the first included;
- ``AWS_RETRY_MODE`` (default ``standard``; ``adaptive`` also rate-limits the client when throttled);
- ``S3_CONNECT_TIMEOUT`` (default 10) and ``S3_READ_TIMEOUT`` (default 60): seconds per attempt.

Standard mode retries connection errors (refused, reset, closed), connect and read timeouts, HTTP 500/502/503/504,
``RequestTimeout`` and throttling (``SlowDown``, HTTP 429), waiting ``rand(0, 1) * min(0.05 s * 2**i, 20 s)`` before
retry ``i`` (1 s instead of 0.05 s when throttled): about half a minute of retries with the defaults, at most a
minute. A fault that outlasts them is ``StoreUnavailable``, naming the endpoint, the bucket and the attempts: the
step fails as a retryable task, not as a user error. A refusal no retry can change fails at once as a
``StorageError`` naming the endpoint, the bucket and the fix: a missing bucket (``NoSuchBucket``), access denied
(``AccessDenied``, HTTP 403), an unknown access key (``InvalidAccessKeyId``) or a wrong secret
(``SignatureDoesNotMatch``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from mlsteps.errors import ConfigError, StorageError, StoreUnavailable

S3_ENDPOINT_ENV_VAR = "S3_ENDPOINT_URL"
# botocore reads the first two itself too; they are read here so that this module's defaults apply when unset.
S3_MAX_ATTEMPTS_ENV_VAR = "AWS_MAX_ATTEMPTS"
S3_RETRY_MODE_ENV_VAR = "AWS_RETRY_MODE"
S3_CONNECT_TIMEOUT_ENV_VAR = "S3_CONNECT_TIMEOUT"
S3_READ_TIMEOUT_ENV_VAR = "S3_READ_TIMEOUT"
# Enough to ride out a store restart of about half a minute (see the module docstring for the waits).
DEFAULT_S3_MAX_ATTEMPTS = 12
DEFAULT_S3_RETRY_MODE = "standard"
DEFAULT_S3_CONNECT_TIMEOUT_S = 10.0
DEFAULT_S3_READ_TIMEOUT_S = 60.0
_RETRY_MODES = ("standard", "adaptive", "legacy")
_ACCESS_DENIED = (
    "access denied to {uri}: give these credentials s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket on "
    "bucket {bucket} (IAM or bucket policy), or use credentials that have them"
)
# Refusals that no retry changes, by error code (HEAD requests carry only the HTTP status), with their fix.
_S3_REFUSALS = {
    "NoSuchBucket": "bucket {bucket} does not exist: create it (aws s3 mb s3://{bucket}) or fix the URI {uri}",
    "AccessDenied": _ACCESS_DENIED,
    "AllAccessDisabled": _ACCESS_DENIED,
    "403": _ACCESS_DENIED,
    "InvalidAccessKeyId": (
        "the store knows no access key AWS_ACCESS_KEY_ID gives: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to "
        "a key of this store"
    ),
    "SignatureDoesNotMatch": (
        "the secret key does not match the access key: set AWS_SECRET_ACCESS_KEY to the secret of AWS_ACCESS_KEY_ID"
    ),
    "ExpiredToken": "the session token has expired: refresh the credentials (AWS_SESSION_TOKEN, or the pod identity)",
    "InvalidToken": "the session token is not valid: refresh the credentials (AWS_SESSION_TOKEN, or the pod identity)",
}


def is_s3(uri: str) -> bool:
    """Whether the URI names an object in S3 (or an S3-compatible store)."""
    return uri.startswith("s3://")


def _is_absolute(uri: str) -> bool:
    return is_s3(uri) or uri.startswith("file://") or uri.startswith("/")


def local_path(uri: str) -> Path:
    """The filesystem path of a local URI (plain path or ``file://``)."""
    if is_s3(uri):
        raise ValueError(f"{uri} is an S3 URI, not a local path")
    return Path(unquote(urlparse(uri).path) if uri.startswith("file://") else uri)


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/``; an absolute part (path or URI) replaces what came before it."""
    result = base
    for part in parts:
        result = part if _is_absolute(part) else f"{result.rstrip('/')}/{part.lstrip('/')}"
    return result


def parent(uri: str) -> str:
    """The URI of the folder that holds ``uri``."""
    head, separator, _ = uri.rstrip("/").rpartition("/")
    return head or separator or "."


def split_s3(uri: str) -> tuple[str, str]:
    """Bucket and key of an ``s3://`` URI."""
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


@functools.cache
def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process umask; ``mkstemp`` alone would leave it 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@dataclass(frozen=True)
class S3RetrySettings:
    """How the S3 client retries and how long each attempt may take (see the module docstring)."""

    max_attempts: int
    mode: str
    connect_timeout_s: float
    read_timeout_s: float


def _env_number(name: str, default: float, kind: type[int] | type[float]) -> Any:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise ConfigError(f"{name}={text!r} is not a {kind.__name__} >= 1: set one (default {default}) or unset it")
    return value


def s3_retry_settings() -> S3RetrySettings:
    """The retry settings the environment gives, with this module's defaults.

    Raises:
        ConfigError: a variable is set to something other than a number >= 1 or a known retry mode.
    """
    mode = os.environ.get(S3_RETRY_MODE_ENV_VAR) or DEFAULT_S3_RETRY_MODE
    if mode not in _RETRY_MODES:
        raise ConfigError(f"{S3_RETRY_MODE_ENV_VAR}={mode!r} is not a botocore retry mode: use one of {_RETRY_MODES}")
    return S3RetrySettings(
        max_attempts=_env_number(S3_MAX_ATTEMPTS_ENV_VAR, DEFAULT_S3_MAX_ATTEMPTS, int),
        mode=mode,
        connect_timeout_s=_env_number(S3_CONNECT_TIMEOUT_ENV_VAR, DEFAULT_S3_CONNECT_TIMEOUT_S, float),
        read_timeout_s=_env_number(S3_READ_TIMEOUT_ENV_VAR, DEFAULT_S3_READ_TIMEOUT_S, float),
    )


@functools.cache
def s3_client() -> Any:
    """A boto3 S3 client, honouring ``S3_ENDPOINT_URL`` for S3-compatible stores and retrying as
    ``s3_retry_settings`` says: the one place where S3 retries are configured."""
    import boto3
    from botocore.config import Config

    settings = s3_retry_settings()
    config = Config(
        retries={"mode": settings.mode, "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
    )
    # A session of its own: it reads the credentials when the client is made, not when the process first used boto3.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=os.environ.get(S3_ENDPOINT_ENV_VAR) or None, config=config)


def _store(bucket: str) -> str:
    """The store a message names: the endpoint (or AWS S3) and the bucket."""
    endpoint = os.environ.get(S3_ENDPOINT_ENV_VAR)
    where = f"S3 store {endpoint}" if endpoint else f"AWS S3 ({S3_ENDPOINT_ENV_VAR} is not set)"
    return f"{where}, bucket {bucket}"


def _root_error(exc: BaseException) -> BaseException:
    """The botocore error inside boto3's transfer wrappers (``S3UploadFailedError`` keeps it as its context)."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError

    if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
        return exc.last_exception
    if isinstance(exc, S3UploadFailedError) and exc.__context__ is not None:
        return exc.__context__
    return exc


def _s3_failure(uri: str, exc: BaseException) -> Exception | None:
    """The package's error for a failed S3 call, or None to let the caller's own handling see the original.

    A refusal in ``_S3_REFUSALS`` is a ``StorageError``. A connection error, or an error response botocore retried
    (or would retry: 5xx, 429) until it gave up, is ``StoreUnavailable``. Anything else (a missing key, a failed
    precondition) stays as botocore raised it.
    """
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    bucket = split_s3(uri)[0]
    error = _root_error(exc)
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        metadata = error.response.get("ResponseMetadata", {})
        if code in _S3_REFUSALS:
            reason = _S3_REFUSALS[code].format(uri=uri, bucket=bucket)
            return StorageError(f"{_store(bucket)} refused {uri} ({code}): {reason}")
        status = int(metadata.get("HTTPStatusCode") or 0)
        if not (metadata.get("RetryAttempts") or status >= 500 or status == 429):
            return None
        attempts, cause = int(metadata.get("RetryAttempts", 0)) + 1, f"{code}, HTTP {status}"
    elif isinstance(error, BotoConnectionError | HTTPClientError):
        attempts, cause = s3_retry_settings().max_attempts, str(error)
    else:
        return None
    return StoreUnavailable(
        f"{_store(bucket)} was unreachable after {attempts} attempts for {uri} ({cause}): check that the store is up "
        f"and reachable from here, or raise {S3_MAX_ATTEMPTS_ENV_VAR} to ride out longer outages; the task can be "
        "retried as it is"
    )


@contextlib.contextmanager
def s3_access(uri: str) -> Iterator[None]:
    """Turn S3 failures into errors that name the store and the fix; boto3's own name neither.

    Raises:
        StorageError: no credentials anywhere in boto3's chain, or a refusal no retry changes (missing bucket,
            access denied, unknown key, wrong secret), naming the URI, the store and what to set or do.
        StoreUnavailable: the store did not answer through every retry (connection errors, timeouts, 5xx,
            throttling).
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        endpoint = os.environ.get(S3_ENDPOINT_ENV_VAR)
        store = f"{S3_ENDPOINT_ENV_VAR}={endpoint}" if endpoint else f"AWS S3 ({S3_ENDPOINT_ENV_VAR} is not set)"
        raise StorageError(
            f"no S3 credentials to access {uri} on {store}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE, or give the pod a workload identity (web identity token or instance profile); "
            f"for an S3-compatible store (MinIO, Ceph) set {S3_ENDPOINT_ENV_VAR} to its URL too"
        ) from None
    except (ClientError, BotoCoreError, Boto3Error) as exc:
        failure = _s3_failure(uri, exc)
        if failure is None:
            raise
        if isinstance(failure, StorageError):
            raise failure from None
        raise failure from exc


def make_folder(folder: Path, uri: str) -> None:
    """Create a folder and its parents, naming the file in the way when a file was given where a folder belongs.

    Raises:
        StorageError: ``folder`` or one of its parents is an existing file.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise StorageError(
            f"cannot write {uri}: {blocker} is a file, not a folder; give a folder path (new or existing), "
            f"or move {blocker} away"
        ) from None


def read_bytes(uri: str) -> bytes:
    """Read a whole object or file.

    Raises:
        FileNotFoundError: naming the URI, for local files and S3 keys alike.
        StorageError: S3 has no credentials, the bucket does not exist or access is denied (``s3_access``).
        StoreUnavailable: S3 did not answer through every retry.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with s3_access(uri):
            try:
                return client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except client.exceptions.NoSuchKey as exc:
                raise FileNotFoundError(f"no such object: {uri}") from exc
    path = local_path(uri)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {uri}")
    return path.read_bytes()


class _S3RangeReader(io.RawIOBase):
    """A seekable, read-only S3 object: each read is one ranged GET, so a reader that needs only a file's head or its
    Parquet footer fetches only those bytes."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, self.key = split_s3(uri)
        self.client = s3_client()
        with s3_access(uri):
            try:
                self.size = self.client.head_object(Bucket=self.bucket, Key=self.key)["ContentLength"]
            except self.client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    raise FileNotFoundError(f"no such object: {uri}") from None
                raise
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        end = min(self.position + len(buffer), self.size)
        if end <= self.position:
            return 0
        with s3_access(self.uri):
            answer = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{end - 1}")
            data = answer["Body"].read()
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def open_input(uri: str) -> BinaryIO:
    """A seekable binary reader of a file or object, for readers that need only part of it (a CSV's header line, a
    Parquet footer); close it after use.

    Raises:
        FileNotFoundError: naming the URI, for local files and S3 keys alike.
        StorageError: S3 has no credentials, the bucket does not exist or access is denied (``s3_access``).
        StoreUnavailable: S3 did not answer through every retry.
    """
    if is_s3(uri):
        return io.BufferedReader(_S3RangeReader(uri), buffer_size=1 << 20)
    path = local_path(uri)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {uri}")
    return path.open("rb")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object or file, atomically for local files; parent folders are created.

    Raises:
        StorageError: a file lies where a parent folder belongs, or S3 refuses (``s3_access``).
        StoreUnavailable: S3 did not answer through every retry.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with s3_access(uri):
            s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    make_folder(path.parent, uri)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(uri: str) -> str:
    """Read a UTF-8 text file or object."""
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    """Write a UTF-8 text file or object."""
    write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    """Read a JSON document."""
    return json.loads(read_bytes(uri))


def write_json(uri: str, payload: Any) -> None:
    """Write a JSON document, indented and with sorted keys so equal content gives equal bytes."""
    write_text(uri, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def exists(uri: str) -> bool:
    """Whether a file or object exists."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()
        with s3_access(uri):
            try:
                client.head_object(Bucket=bucket, Key=key)
            except client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    return False
                raise
        return True
    return local_path(uri).is_file()


def list_files(prefix: str) -> list[str]:
    """URIs of every file under a folder prefix, sorted."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/"
        paginator = s3_client().get_paginator("list_objects_v2")
        with s3_access(prefix):
            found = [
                f"s3://{bucket}/{item['Key']}"
                for page in paginator.paginate(Bucket=bucket, Prefix=key)
                for item in page.get("Contents", [])
            ]
        return sorted(found)
    root = local_path(prefix)
    if not root.is_dir():
        return []
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def delete(uri: str) -> None:
    """Remove a file or object; one that is not there is no error (S3's delete is idempotent too)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with s3_access(uri):
            s3_client().delete_object(Bucket=bucket, Key=key)
        return
    local_path(uri).unlink(missing_ok=True)


def upload_file(path: Path, uri: str) -> None:
    """Copy a local file to a URI (streamed for S3, atomic for local targets).

    Raises:
        StorageError: S3 refuses (``s3_access``).
        StoreUnavailable: S3 did not answer through every retry.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with s3_access(uri):
            s3_client().upload_file(str(path), bucket, key)
        return
    write_bytes(uri, path.read_bytes())


def download_file(uri: str, path: Path) -> Path:
    """Copy a URI to a local file (streamed for S3) and return the local path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        if not exists(uri):
            raise FileNotFoundError(f"no such object: {uri}")
        bucket, key = split_s3(uri)
        with s3_access(uri):
            s3_client().download_file(bucket, key, str(path))
        return path
    path.write_bytes(read_bytes(uri))
    return path


def read_parquet(uri: str) -> Any:
    """Read a Parquet file or object into a pandas DataFrame."""
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(read_bytes(uri))).to_pandas()


def write_parquet(frame: Any, uri: str) -> None:
    """Write a pandas DataFrame as one Parquet file or object (no index, zstd-compressed)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="zstd")
    write_bytes(uri, buffer.getvalue())
