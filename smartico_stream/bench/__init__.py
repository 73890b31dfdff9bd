"""``smartico-stream bench``: the service's throughput, latency and memory, measured in one run.

What runs (docs/performance.md explains every figure and the settings that move it):

``raw``
    a bare confluent-kafka consumer, ``consume(10000)`` plus ``orjson.loads`` of every value and
    nothing else: the ceiling on this machine.
``pipeline``
    the service itself (reference adapter, validation, PII guard, dedup, the 50 rules of
    :func:`bench_rules`, the SQLite store with its one-transaction-per-batch commit, Kafka commits,
    the outbox relay delivering to a JSONL sink), in-process exactly as ``smartico-stream run``
    builds it.
``pipeline_postgres``
    the same with the PostgreSQL store (and PII vault), when PostgreSQL answers.
``rabbitmq_raw`` / ``rabbitmq_pipeline``
    the same two against the local RabbitMQ (consistent-hash exchanges, quorum queues), when it
    answers.
``rest_pipeline``
    ``smartico-stream run`` with ``source: rest`` on SQLite, fed over loopback HTTP in batches of 500
    (events/s to the store commit, and p99 request latency at half that rate; docs/rest.md).

plus the latency (record timestamp to store commit, at half the pipeline's measured rate), the
memory of a dedup window holding two minutes of keys at 100k events/s, and (full run only) the
cost of 1M distinct users against 100k and of two processes in one consumer group against one.

How it keeps the measurement honest:

* Every consumer under test runs in a process of its own (spawned), pinned to one core when the
  machine has more than one; the embedded Kafka cluster and the producer live in another process,
  pinned to the other cores. A scenario's CPU time and peak RSS are the service process's own.
* The producer replays a stream pre-generated once (``synthetic_stream``: profiles, payments,
  casino, sport, 2 % duplicates, 1 % malformed) and never runs more than ``max_ahead`` records /
  ``max_ahead_bytes`` ahead of what the consumer fetched, because the embedded cluster keeps only
  ~4-5 MB per partition. It starts before the consumer, so a backlog is waiting when the clock
  starts; ``min_lead_records`` reports the smallest backlog seen while measuring (0 would mean the
  producer, not the service, was the bottleneck).
* ``raw`` is measured in rounds: a backlog is produced and flushed first, then only draining it is
  timed, so the producer's speed never enters the ceiling.
* ``events_per_s`` of a pipeline is records handled / seconds from the first fetched batch to the
  moment the last batch is committed *and* the outbox relay has delivered every action.
* Every scenario reports ``records`` (handled) and ``expected_records`` (produced); a run in which
  they differ is marked incomplete and the command exits 1.

The service exposes no per-record commit hook, so the bench wraps two of the built service's
attributes (``service.transport.poll`` and ``service.store.commit``) to see each batch's records and
the instant its store transaction returned; nothing else is changed.

Where it lives (one concern per module; ``smartico-stream`` imports none of this until ``bench``
runs):

``command``      the typer command: options, their checks, table or JSON output
``runner``       one run: stream, rules, key ring and cluster set up once, every scenario in order
``scenarios/``   raw, pipeline (and latency), rabbitmq, dedup, scaling: the orchestrator's side
``workers/``     what runs in each process under test: raw consumers, the service, the dedup window
``cluster``      the embedded Kafka and the producer (their process, and the handle on it)
``processes``    the shared array's slots, pinning, answers over pipes
``profiles``     the parts, ``--quick`` and the full run, default DSN and URL
``stream``       the synthetic stream, generated once into a binary file
``rules``        the 50 rules
``settings``     the service's configuration per scenario, ``--set``, values read back
``backends``     PostgreSQL and RabbitMQ: availability, scratch schemas, topology, publishing
``machine``      machine facts, load, the core plan, /proc sampling of live processes
``report``       the report's shape, overall figures, targets, notes, the table
"""

from smartico_stream.bench.backends import postgres_problem, rabbitmq_problem
from smartico_stream.bench.cluster import MOCK_CLUSTER_CONSUMER
from smartico_stream.bench.command import bench_command
from smartico_stream.bench.machine import core_plan, machine
from smartico_stream.bench.processes import BenchError
from smartico_stream.bench.profiles import (
    DEFAULT_PG_DSN,
    DEFAULT_RABBITMQ_URL,
    FULL,
    LATENCY_SLICE_S,
    OVERALL_KEYS,
    PARTS,
    QUICK,
    SCENARIOS,
    Profile,
)
from smartico_stream.bench.report import render_table
from smartico_stream.bench.rules import bench_rules, write_rules
from smartico_stream.bench.runner import run_bench
from smartico_stream.bench.scenarios import Progress
from smartico_stream.bench.settings import parse_setting
from smartico_stream.bench.stream import (
    KINDS,
    MAX_MESSAGE_BYTES,
    OVERSIZED_BYTES,
    STREAM_ORDER,
    TOPICS,
    read_stream,
    write_stream,
)

__all__ = [
    "DEFAULT_PG_DSN",
    "DEFAULT_RABBITMQ_URL",
    "FULL",
    "KINDS",
    "LATENCY_SLICE_S",
    "MAX_MESSAGE_BYTES",
    "MOCK_CLUSTER_CONSUMER",
    "OVERALL_KEYS",
    "OVERSIZED_BYTES",
    "PARTS",
    "QUICK",
    "SCENARIOS",
    "STREAM_ORDER",
    "TOPICS",
    "BenchError",
    "Profile",
    "Progress",
    "bench_command",
    "bench_rules",
    "core_plan",
    "machine",
    "parse_setting",
    "postgres_problem",
    "rabbitmq_problem",
    "read_stream",
    "render_table",
    "run_bench",
    "write_rules",
    "write_stream",
]
