"""librdkafka's built-in mock cluster, for the demo, the tests and the benchmark.

It speaks the real Kafka protocol on 127.0.0.1, so other clients and other processes connect to it
like to any cluster. It lives as long as this object; topics are auto-created with 4 partitions and
each partition keeps only its newest ~30k small messages (producers must not run far ahead)."""

from __future__ import annotations

import logging
from types import TracebackType

from confluent_kafka.admin import AdminClient


class EmbeddedKafka:
    def __init__(self, brokers: int = 3) -> None:
        self._admin: AdminClient | None = AdminClient(
            {
                "test.mock.num.brokers": brokers,
                # The client takes a logging.Logger here (documented); its stub allows scalar values only.
                "logger": logging.getLogger("smartico_stream.rdkafka.mock"),  # type: ignore[dict-item]
            }
        )
        metadata = self._admin.list_topics(timeout=10)
        self.bootstrap_servers = ",".join(f"{b.host}:{b.port}" for b in metadata.brokers.values())

    def close(self) -> None:
        # Dropping the last reference to the creating client destroys the cluster.
        self._admin = None

    def __enter__(self) -> EmbeddedKafka:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
