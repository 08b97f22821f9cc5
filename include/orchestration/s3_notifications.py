"""The trigger of the ``training_data`` asset's watcher: long-polls the dataset bucket's S3 -> SQS notifications.

A module of its own so that DAG files import Airflow's trigger machinery only when a queue is configured
(``runtime.new_data.queue_url``); which messages are new data is decided in ``orchestration.new_data``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from orchestration.new_data import classify_message

_RECEIVE_MAX = 10  # the most messages one SQS receive returns


class S3NotificationTrigger(BaseEventTrigger):
    """Long-polls the SQS queue of the dataset bucket's S3 notifications; fires for new versions of the dataset.

    Every received message is deleted, the ignored ones too (each logged with its reason), so a test event or a
    stray message is not received again and again. Each event carries the batch's messages about the dataset.
    """

    def __init__(
        self,
        *,
        queue_url: str,
        dataset_uri: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        wait_time_seconds: int = 20,
        poll_seconds: int = 60,
    ) -> None:
        super().__init__()
        self.queue_url = queue_url
        self.dataset_uri = dataset_uri
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.wait_time_seconds = wait_time_seconds
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and arguments: the triggerer rebuilds the trigger from them."""
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "queue_url": self.queue_url,
            "dataset_uri": self.dataset_uri,
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "wait_time_seconds": self.wait_time_seconds,
            "poll_seconds": self.poll_seconds,
        }

    def _client(self) -> Any:
        """A boto3 SQS client from the Airflow connection (credentials, region, ``endpoint_url`` in its extra)."""
        from airflow.providers.amazon.aws.hooks.sqs import SqsHook  # boto3: not at DAG parse time

        return SqsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn

    def _is_new_data(self, message: dict[str, Any]) -> bool:
        event, reason = classify_message(message["Body"], self.dataset_uri)
        self.log.info("SQS message %s: %s", message["MessageId"], reason)
        return event is not None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Receive, keep the dataset's messages, delete all; yield one event per batch that has new data."""
        client = await asyncio.to_thread(self._client)  # the connection lookup and boto3 block: not on the loop
        while True:
            response = await asyncio.to_thread(
                client.receive_message,
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=_RECEIVE_MAX,
                WaitTimeSeconds=self.wait_time_seconds,
            )
            messages = response.get("Messages", [])
            if not messages:
                await asyncio.sleep(self.poll_seconds)
                continue
            kept = [message for message in messages if self._is_new_data(message)]
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
            deleted = await asyncio.to_thread(client.delete_message_batch, QueueUrl=self.queue_url, Entries=entries)
            if deleted.get("Failed"):
                self.log.warning("could not delete SQS messages, they will be received again: %s", deleted["Failed"])
            if kept:
                yield TriggerEvent({"status": "success", "message_batch": kept})
