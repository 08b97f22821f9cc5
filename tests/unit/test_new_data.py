"""New training data: S3 event notifications reach SQS, the watcher's trigger fires for the dataset only.

Everything goes over real HTTP to moto's server: a bucket whose notifications go to an SQS queue, the real trigger's
``run()`` reading that queue through an Airflow connection, and DAG files parsed by a DagBag in a fresh process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from airflow.sdk.module_loading import import_string
from airflow.triggers.base import BaseEventTrigger, TriggerEvent
from pydantic import ValidationError

from mlsteps.data import storage
from mlsteps.errors import ConfigError
from orchestration.new_data import (
    ASSET_NAME,
    WATCHER_NAME,
    NewDataEvent,
    classify_message,
    new_data_event,
    training_data_asset,
)
from orchestration.s3_notifications import S3NotificationTrigger
from orchestration.settings import NewDataSettings, RuntimeSettings, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "include" / "config" / "pipeline.yaml"
CONN_ID = "moto_sqs"
DATASET_KEY = "churn/new data.csv"  # a space: S3 URL-encodes keys in its events
DATA = b"customer_id,churned\n1,0\n2,1\n"


@dataclass(frozen=True)
class NotifiedBucket:
    """A bucket whose ObjectCreated and ObjectRemoved notifications go to an SQS queue, both on moto."""

    s3: Any
    sqs: Any
    bucket: str
    queue_url: str
    test_event_body: str  # what S3 sent when the notification was configured

    @property
    def dataset_uri(self) -> str:
        return f"s3://{self.bucket}/{DATASET_KEY}"


def _notify(s3: Any, sqs: Any, bucket: str, queue_url: str) -> None:
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]}]
        },
    )


def _next_body(sqs: Any, queue_url: str, timeout: float = 10) -> str:
    """The body of the next message on the queue, deleted from it; fails after ``timeout`` seconds without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1).get("Messages")
        if messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=messages[0]["ReceiptHandle"])
            return messages[0]["Body"]
    raise AssertionError(f"no message on {queue_url} within {timeout} s")


def _queued(sqs: Any, queue_url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[name]) for name in names)


@pytest.fixture
def notified(s3_bucket: str, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> NotifiedBucket:
    bucket = s3_bucket.removeprefix("s3://")
    s3, sqs = storage.s3_client(), boto3.client("sqs", endpoint_url=moto_server)
    queue_url = sqs.create_queue(QueueName=bucket)["QueueUrl"]
    _notify(s3, sqs, bucket, queue_url)
    # The trigger's Airflow connection: endpoint_url in the extra sends every AWS call to moto.
    connection = {"conn_type": "aws", "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"}}
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    return NotifiedBucket(s3, sqs, bucket, queue_url, test_event_body=_next_body(sqs, queue_url))


async def _first_event(trigger: BaseEventTrigger, timeout: float = 30) -> TriggerEvent:
    events = trigger.run()
    try:
        return await asyncio.wait_for(anext(events), timeout)
    finally:
        await events.aclose()


def test_the_trigger_fires_for_a_new_version_of_the_dataset_and_drops_every_other_message(
    notified: NotifiedBucket,
) -> None:
    sqs, queue_url = notified.sqs, notified.queue_url
    sqs.send_message(QueueUrl=queue_url, MessageBody=notified.test_event_body)
    sqs.send_message(QueueUrl=queue_url, MessageBody="retrain please")
    notified.s3.put_object(Bucket=notified.bucket, Key="churn/other.csv", Body=b"x\n")
    notified.s3.put_object(Bucket=notified.bucket, Key=DATASET_KEY, Body=DATA)
    trigger = S3NotificationTrigger(
        queue_url=queue_url,
        dataset_uri=notified.dataset_uri,
        aws_conn_id=CONN_ID,
        wait_time_seconds=1,
        poll_seconds=0,
    )

    event = asyncio.run(_first_event(trigger))

    # The provider's SqsSensorTrigger payload shape, holding only the dataset's message; stored as JSON.
    assert event.payload["status"] == "success"
    assert len(event.payload["message_batch"]) == 1
    assert json.loads(json.dumps(event.payload)) == event.payload
    found, reason = new_data_event({"from_trigger": True, "payload": event.payload}, notified.dataset_uri)
    assert found == NewDataEvent(
        bucket=notified.bucket,
        key=DATASET_KEY,
        event_name="ObjectCreated:Put",
        event_time=found.event_time,
        size=len(DATA),
        etag=hashlib.md5(DATA).hexdigest(),
        version_id=None,
    )
    assert found.uri == notified.dataset_uri
    at = f"ObjectCreated:Put at {found.event_time}, {len(DATA)} bytes"
    assert reason == f"new version of the dataset {notified.dataset_uri}: {at}"
    # The test event, the text and the other object's event were deleted too, so none comes back.
    assert _queued(sqs, queue_url) == 0


def test_the_s3_test_event_is_no_new_data(notified: NotifiedBucket) -> None:
    assert classify_message(notified.test_event_body, notified.dataset_uri) == (
        None,
        f"S3 test event of bucket {notified.bucket} (sent when its notifications were configured): ignored",
    )


def test_events_of_other_objects_and_other_buckets_are_no_new_data(notified: NotifiedBucket) -> None:
    notified.s3.put_object(Bucket=notified.bucket, Key="churn/other.csv", Body=b"x\n")
    other_key = _next_body(notified.sqs, notified.queue_url)
    other_bucket = f"{notified.bucket[:50]}-other"
    notified.s3.create_bucket(Bucket=other_bucket)
    _notify(notified.s3, notified.sqs, other_bucket, notified.queue_url)
    _next_body(notified.sqs, notified.queue_url)  # the other bucket's test event
    notified.s3.put_object(Bucket=other_bucket, Key=DATASET_KEY, Body=DATA)
    same_key_other_bucket = _next_body(notified.sqs, notified.queue_url)

    dataset = notified.dataset_uri
    assert classify_message(other_key, dataset) == (
        None,
        f"S3 event for s3://{notified.bucket}/churn/other.csv, not the dataset {dataset}: ignored",
    )
    assert classify_message(same_key_other_bucket, dataset) == (
        None,
        f"S3 event for s3://{other_bucket}/{DATASET_KEY}, not the dataset {dataset}: ignored",
    )


def test_a_dataset_prefix_takes_the_objects_under_it_only(notified: NotifiedBucket) -> None:
    notified.s3.put_object(Bucket=notified.bucket, Key="churn/2026-12.csv", Body=DATA)
    body = _next_body(notified.sqs, notified.queue_url)

    event, _ = classify_message(body, f"s3://{notified.bucket}/churn/")
    assert event is not None and event.key == "churn/2026-12.csv"
    archive = f"s3://{notified.bucket}/archive/"
    assert classify_message(body, archive) == (
        None,
        f"S3 event for s3://{notified.bucket}/churn/2026-12.csv, not the dataset {archive}: ignored",
    )


def test_deleting_the_dataset_is_no_new_data(notified: NotifiedBucket) -> None:
    notified.s3.put_object(Bucket=notified.bucket, Key=DATASET_KEY, Body=DATA)
    created = _next_body(notified.sqs, notified.queue_url)
    notified.s3.delete_object(Bucket=notified.bucket, Key=DATASET_KEY)
    removed = _next_body(notified.sqs, notified.queue_url)

    assert classify_message(created, notified.dataset_uri)[0] is not None
    assert classify_message(removed, notified.dataset_uri) == (
        None,
        f"S3 ObjectRemoved:Delete of {notified.dataset_uri} is not a new version "
        "(only ObjectCreated:* events are): ignored",
    )


@pytest.mark.parametrize(
    "body",
    ["retrain please", '{"Records": [{"eventSource": "aws:sqs", "body": "hi"}]}', '{"Records": []}', "[1, 2]"],
)
def test_messages_that_are_not_s3_notifications_are_no_new_data(notified: NotifiedBucket, body: str) -> None:
    notified.sqs.send_message(QueueUrl=notified.queue_url, MessageBody=body)
    received = _next_body(notified.sqs, notified.queue_url)

    assert classify_message(received, notified.dataset_uri) == (
        None,
        f"queue message is not an S3 event notification: {body!r}",
    )


@pytest.mark.parametrize(
    "extra",
    [{}, {"source": "upstream"}, {"from_trigger": True, "payload": {"status": "success", "message_batch": []}}],
)
def test_asset_events_without_queue_messages_are_named(extra: dict[str, Any]) -> None:
    # Events from an upstream DAG's outlet or POST /api/v2/assets/events carry their own extra, no SQS messages.
    event, reason = new_data_event(extra, "s3://ml-datasets/churn/churn.csv")
    assert event is None
    assert reason == f"asset event holds no SQS messages of the {WATCHER_NAME} watcher (extra {json.dumps(extra)!r})"


def _settings(queue_url: str | None, dataset_uri: str) -> Settings:
    settings = load_settings()
    runtime = settings.runtime.model_copy(update={"new_data": NewDataSettings(queue_url=queue_url)})
    return settings.model_copy(update={"runtime": runtime, "dataset_uri": dataset_uri})


def test_training_data_has_a_watcher_only_with_a_queue(tmp_path: Path) -> None:
    local = training_data_asset(_settings(None, str(tmp_path / "churn.csv")))
    assert (local.name, local.uri, local.watchers) == (f"churn.{ASSET_NAME}", (tmp_path / "churn.csv").as_uri(), [])
    assert training_data_asset(_settings(None, "s3://ml-datasets/churn/churn.csv")).watchers == []

    queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/ml-dataset-events"
    watched = training_data_asset(_settings(queue_url, "s3://ml-datasets/churn/churn.csv"))
    assert watched.uri == "s3://ml-datasets/churn/churn.csv"
    [watcher] = watched.watchers
    assert watcher.name == WATCHER_NAME
    assert isinstance(watcher.trigger, BaseEventTrigger)  # what AssetWatcher requires
    assert watcher.trigger.serialize() == (
        "orchestration.s3_notifications.S3NotificationTrigger",
        {
            "queue_url": queue_url,
            "dataset_uri": "s3://ml-datasets/churn/churn.csv",
            "aws_conn_id": "aws_default",
            "region_name": None,
            "wait_time_seconds": 20,
            "poll_seconds": 60,
        },
    )


def test_a_queue_for_a_local_dataset_is_a_config_error(tmp_path: Path) -> None:
    queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/ml-dataset-events"
    with pytest.raises(ConfigError, match=r"runtime\.new_data\.queue_url is set but the dataset '.*churn\.csv' is not"):
        training_data_asset(_settings(queue_url, str(tmp_path / "churn.csv")))


def test_new_data_settings_are_off_by_default_and_checked() -> None:
    assert RuntimeSettings().new_data.queue_url is None
    with pytest.raises(ValidationError, match="'ml-dataset-events' is not an SQS queue URL"):
        RuntimeSettings.model_validate({"new_data": {"queue_url": "ml-dataset-events"}})
    with pytest.raises(ValidationError, match="wait_time_seconds"):
        RuntimeSettings.model_validate({"new_data": {"wait_time_seconds": 21}})


def test_the_commented_new_data_example_in_the_pipeline_config_is_valid() -> None:
    lines = CONFIG.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("  # new_data:")))
    block = [line.replace("# ", "", 1) for line in lines[start:] if line.startswith("  # ")]
    example = yaml.safe_load("\n".join(block))["new_data"]
    assert NewDataSettings.model_validate(example).queue_url.startswith("https://sqs.")


# Parses one DAG folder in a fresh process (settings are read once per process, at parse time) and prints, per DAG,
# the asset watchers its serialized schedule holds, as the dag-processor stores them.
_PARSE_PROBE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization

def watchers(node):
    if isinstance(node, dict):
        return node.get("watchers", []) + [w for value in node.values() for w in watchers(value)]
    return [w for value in node for w in watchers(value)] if isinstance(node, list) else []

bag = DagBag(sys.argv[1])
print(json.dumps({
    "import_errors": bag.import_errors,
    "watchers": {i: watchers(DagSerialization.to_dict(dag)["dag"]["timetable"]) for i, dag in bag.dags.items()},
    "sqs_hook": "airflow.providers.amazon.aws.hooks.sqs" in sys.modules,
}))
"""

_WATCHING_DAG = '''
"""A DAG scheduled on the watched training_data asset."""
import pendulum
from airflow.sdk import dag, task

from orchestration.new_data import training_data_asset
from orchestration.settings import get_settings


@dag(schedule=[training_data_asset(get_settings())], start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
def on_new_data():
    @task
    def noop() -> None:
        pass

    noop()


on_new_data()
'''
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/ml-dataset-events"
S3_DATASET = "s3://ml-datasets/churn/churn.csv"


def _parse_with_a_queue(dags_folder: Path, tmp_path: Path) -> dict[str, Any]:
    """What a dag-processor parses from the folder when runtime.new_data names a queue and the dataset is in S3."""
    model = {
        "extends": str(CONFIG.parent / "models" / "churn.yaml"),
        "dataset": str(CONFIG.parent / "datasets" / "churn.yaml"),
        "registry": {"model_name": "churn-classifier"},
        "runtime": {"new_data": {"queue_url": QUEUE_URL, "poll_seconds": 30}, "dataset_uri": S3_DATASET},
    }
    (tmp_path / "models").mkdir()
    config = tmp_path / "models" / "churn.yaml"
    config.write_text(yaml.safe_dump(model))
    env = {**os.environ, "MLSTEPS_CONFIG": str(config), "ML_MODELS_DIR": str(tmp_path / "models")}
    done = subprocess.run(
        [sys.executable, "-c", _PARSE_PROBE, str(dags_folder)], capture_output=True, text=True, env=env, check=True
    )
    parsed = json.loads(done.stdout.splitlines()[-1])
    assert parsed["import_errors"] == {}
    # The trigger imports its SQS hook when it runs. (boto3 itself is imported at parse time by any s3:// asset:
    # the amazon provider's s3 URI normalizer imports its S3Hook.)
    assert parsed["sqs_hook"] is False, "the watcher must not import the SQS hook at parse time"
    return parsed["watchers"]


def test_a_dag_on_the_watched_asset_parses_and_the_triggerer_can_rebuild_its_trigger(tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "on_new_data.py").write_text(_WATCHING_DAG)

    [watcher] = _parse_with_a_queue(tmp_path / "dags", tmp_path)["on_new_data"]

    assert watcher["name"] == WATCHER_NAME
    rebuilt = import_string(watcher["trigger"]["classpath"])(**watcher["trigger"]["kwargs"])
    assert isinstance(rebuilt, S3NotificationTrigger)
    assert rebuilt.serialize()[1] == {
        "queue_url": QUEUE_URL,
        "dataset_uri": S3_DATASET,
        "aws_conn_id": "aws_default",
        "region_name": None,
        "wait_time_seconds": 20,
        "poll_seconds": 30,
    }


def test_ml_retrain_runs_on_the_watched_training_data(tmp_path: Path) -> None:
    watchers = _parse_with_a_queue(REPO_ROOT / "dags", tmp_path)

    assert [w["name"] for w in watchers["churn-classifier.retrain"]] == [WATCHER_NAME]
