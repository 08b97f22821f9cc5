"""New training data: the ``training_data`` asset, its S3 -> SQS watcher, and which queue messages are new data.

S3 sends an event notification to an SQS queue for each object created in the dataset's bucket. The watcher's trigger
long-polls that queue in the triggerer and updates ``training_data`` only for a new version of the dataset object, so
ml_retrain runs on new data. Producers may also update the asset from an upstream DAG's outlet or
``POST /api/v2/assets/events``.

The trigger (``orchestration.s3_notifications``, imported only where a queue is set) is ours, not the amazon provider's
``SqsSensorTrigger`` (what ``MessageQueueTrigger(scheme="sqs")`` runs), for two reasons: it needs aiobotocore, and no
aiobotocore release accepts the botocore the steps pin (1.44.x; aiobotocore 3.10 stops below 1.43.118); and its jsonpath
filter raises on a message body that is not JSON, failing the watcher each time that message is received again. Our
event payload has the provider's shape (``{"status": "success", "message_batch": [<SQS message>, ...]}``), so
``new_data_event`` reads either trigger's events. Switch to the provider's trigger once aiobotocore accepts the pinned
botocore and its filter skips non-JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

from airflow.sdk import Asset, AssetWatcher

from mlsteps.data.storage import is_s3, local_path
from mlsteps.errors import ConfigError

if TYPE_CHECKING:
    from orchestration.settings import Settings

ASSET_NAME = "training_data"  # the asset of new training data
WATCHER_NAME = "training_data_s3_notifications"
_EXCERPT = 200  # characters of an unexpected message quoted in a reason


@dataclass(frozen=True)
class NewDataEvent:
    """A new version of the dataset object: one S3 ``ObjectCreated:*`` event record."""

    bucket: str
    key: str
    event_name: str  # e.g. ObjectCreated:Put, ObjectCreated:CompleteMultipartUpload
    event_time: str  # ISO 8601, as S3 writes it
    size: int | None
    etag: str | None
    version_id: str | None  # versioned buckets only

    @property
    def uri(self) -> str:
        """The object's ``s3://`` URI."""
        return f"s3://{self.bucket}/{self.key}"


Classified = tuple[NewDataEvent | None, str]  # an event, or None, and the reason


def _excerpt(text: str) -> str:
    return repr(text if len(text) <= _EXCERPT else text[:_EXCERPT] + "...")


def _in_dataset(bucket: str, key: str, dataset_uri: str) -> bool:
    """Whether the object is the dataset, or lies under it when the dataset URI is a prefix (ends with ``/``)."""
    if not is_s3(dataset_uri):
        return False
    dataset_bucket, _, dataset_key = dataset_uri.removeprefix("s3://").partition("/")
    is_prefix = dataset_key == "" or dataset_key.endswith("/")
    return bucket == dataset_bucket and (key == dataset_key or (is_prefix and key.startswith(dataset_key)))


def _object_of(record: Any) -> tuple[str, str] | None:
    """Bucket and key of an S3 event record (S3 URL-encodes the key); None for anything else."""
    try:
        source, bucket, key = record["eventSource"], record["s3"]["bucket"]["name"], record["s3"]["object"]["key"]
    except (KeyError, TypeError):
        return None
    if source != "aws:s3" or not isinstance(bucket, str) or not isinstance(key, str):
        return None
    return bucket, unquote_plus(key)


def _classify_record(record: dict[str, Any], bucket: str, key: str, dataset_uri: str) -> Classified:
    uri, event_name = f"s3://{bucket}/{key}", str(record.get("eventName", ""))
    if not _in_dataset(bucket, key, dataset_uri):
        return None, f"S3 event for {uri}, not the dataset {dataset_uri}: ignored"
    if not event_name.startswith("ObjectCreated:"):
        return None, f"S3 {event_name} of {uri} is not a new version (only ObjectCreated:* events are): ignored"
    s3_object = record["s3"]["object"]
    event = NewDataEvent(
        bucket=bucket,
        key=key,
        event_name=event_name,
        event_time=str(record.get("eventTime", "")),
        size=s3_object.get("size"),
        etag=s3_object.get("eTag"),
        version_id=s3_object.get("versionId"),
    )
    return event, f"new version of the dataset {uri}: {event_name} at {event.event_time}, {event.size} bytes"


def _newest(classified: list[Classified]) -> Classified:
    """The newest dataset event and its reason; without one, every reason, so the log says why each was ignored."""
    found = [item for item in classified if item[0] is not None]
    if found:
        return max(found, key=lambda item: item[0].event_time)
    return None, "; ".join(reason for _, reason in classified)


def classify_message(body: str, dataset_uri: str) -> Classified:
    """Whether one SQS message body announces a new version of the dataset, and why (or why not).

    Args:
        body: the message body: S3 sends its event notification JSON (and an ``s3:TestEvent`` on setup).
        dataset_uri: the dataset: an ``s3://bucket/key`` object, or a prefix ending in ``/``.

    Returns:
        The newest matching ``ObjectCreated:*`` record as a ``NewDataEvent`` and a reason naming it; or None and
        the reason the message is no new data (not an S3 notification, the test event, another object, a deletion).
    """
    try:
        notification = json.loads(body)
    except ValueError:
        notification = None
    if isinstance(notification, dict) and notification.get("Event") == "s3:TestEvent":
        bucket = notification.get("Bucket")
        return None, f"S3 test event of bucket {bucket} (sent when its notifications were configured): ignored"
    records = notification.get("Records") if isinstance(notification, dict) else None
    objects = [_object_of(record) for record in records] if isinstance(records, list) else []
    if not objects or None in objects:
        return None, f"queue message is not an S3 event notification: {_excerpt(body)}"
    return _newest([_classify_record(r, *located, dataset_uri) for r, located in zip(records, objects, strict=True)])


def new_data_event(extra: Mapping[str, Any], dataset_uri: str) -> Classified:
    """The new version of the dataset that a ``training_data`` asset event announces, and why (or why not).

    Args:
        extra: the asset event's ``extra`` as the watcher writes it (``{"from_trigger": true, "payload":
            {"message_batch": [...]}}``), or the trigger's payload itself.
        dataset_uri: the dataset (see ``classify_message``).

    Returns:
        The newest dataset event in the batch and its reason; or None and the reasons: the batch holds no new
        version of the dataset, or the event came from elsewhere (an outlet or the REST API) with no SQS messages.
    """
    payload = extra.get("payload", extra)
    batch = payload.get("message_batch") if isinstance(payload, Mapping) else None
    if not isinstance(batch, list) or not batch:
        shown = _excerpt(json.dumps(dict(extra), default=str))
        return None, f"asset event holds no SQS messages of the {WATCHER_NAME} watcher (extra {shown})"
    return _newest([classify_message(_body(message), dataset_uri) for message in batch])


def _body(message: object) -> str:
    """An SQS message's body; the whole message when it has none, so a reason can show it."""
    body = message.get("Body") if isinstance(message, Mapping) else None
    return body if isinstance(body, str) else json.dumps(message, default=str)


def training_data_asset(settings: Settings) -> Asset:
    """The ``<dataset>.training_data`` asset: the dataset URI, watched through SQS when ``runtime.new_data.queue_url``
    is set.

    Args:
        settings: this deployment's settings; ``dataset_uri`` names the data, ``runtime.new_data`` the queue.

    Returns:
        The asset; with one ``AssetWatcher`` whose trigger fires for new versions of the dataset object.

    Raises:
        ConfigError: a queue is set but the dataset is not in S3, so no S3 notification can announce it.
    """
    dataset_uri, new_data = settings.dataset_uri, settings.runtime.new_data
    uri = dataset_uri if is_s3(dataset_uri) else local_path(dataset_uri).resolve().as_uri()
    name = f"{settings.pipeline.dataset.name}.{ASSET_NAME}"
    if new_data.queue_url is None:
        return Asset(name=name, uri=uri)
    if not is_s3(dataset_uri):
        raise ConfigError(
            f"runtime.new_data.queue_url is set but the dataset {dataset_uri!r} is not in S3, so no S3 event "
            "notification can announce a new version: point runtime.dataset_uri (or ML_DATASET_URI) at an s3:// "
            "object, or unset runtime.new_data.queue_url"
        )
    from orchestration.s3_notifications import S3NotificationTrigger  # the triggers module: only with a queue

    trigger = S3NotificationTrigger(
        queue_url=new_data.queue_url,
        dataset_uri=dataset_uri,
        aws_conn_id=new_data.aws_conn_id,
        region_name=new_data.region_name,
        wait_time_seconds=new_data.wait_time_seconds,
        poll_seconds=new_data.poll_seconds,
    )
    return Asset(name=name, uri=uri, watchers=[AssetWatcher(name=WATCHER_NAME, trigger=trigger)])
