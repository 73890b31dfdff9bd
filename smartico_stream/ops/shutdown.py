"""The shutdown budget: how long a SIGTERM'd instance may take in the worst case, so that the
orchestrator's grace period (Kubernetes terminationGracePeriodSeconds, compose stop_grace_period)
can be checked to exceed it. Past the grace period the process is SIGKILLed: harmless for
correctness (the store transaction and fencing keep effects exactly-once) but it costs a replay and
a slower rebalance.

What Service.run does after SIGTERM, each step with its bound (figures from the code; keep in step):

1. finish the batch in hand: dead letters are flushed for at most ``kafka.dead_letter_flush_timeout_s``
   (the retry loop gives up once stopping), then one store transaction;
2. drain the outbox to the sinks: ``relay.drain(timeout_s=5.0)``;
3. close the Kafka consumer: final synchronous commit and LeaveGroup. librdkafka's close() has no
   timeout of its own; CONSUMER_CLOSE_S is an estimate for a reachable cluster;
4. close the dead-letter producer: flush for at most 10 s (``KafkaDeadLetterSink.close``);
5. close each action sink: at most 10 s each (the Kafka sink's flush; the others close sockets).
"""

from __future__ import annotations

from smartico_stream.config import Settings

STORE_COMMIT_S = 5.0
RELAY_DRAIN_S = 5.0
CONSUMER_CLOSE_S = 10.0
DEAD_LETTER_CLOSE_S = 10.0
SINK_CLOSE_S = 10.0


def shutdown_budget_s(settings: Settings) -> float:
    """Worst-case seconds from SIGTERM to exit for this configuration."""
    return (
        settings.kafka.dead_letter_flush_timeout_s
        + STORE_COMMIT_S
        + RELAY_DRAIN_S
        + CONSUMER_CLOSE_S
        + DEAD_LETTER_CLOSE_S
        + SINK_CLOSE_S * len(settings.sinks)
    )
