"""What a bench run measures: its parts, its two sizes (``--quick`` and the full run), and the
services it reaches by default."""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = ("raw", "pipeline", "aggregates", "pipeline_postgres", "rabbitmq_raw", "rabbitmq_pipeline",
             "replica_pipeline", "replica_pipeline_mysql", "rest_pipeline")
PARTS = (*SCENARIOS, "latency", "dedup", "audience", "scaling")  # what --only can name
OVERALL_KEYS = ("ratio_pipeline_to_raw", "p50_latency_ms", "p99_latency_ms", "peak_rss_mb", "dedup_bytes_per_key")

DEFAULT_PG_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_MYSQL_DSN = "mysql://root@127.0.0.1:3306/test"

# The latency run is also reported per slice of this many seconds: the embedded cluster's cost grows
# over a paced run (docs/performance.md, Latency), and the tail with it.
LATENCY_SLICE_S = 10


@dataclass(frozen=True)
class Profile:
    """How much a run measures."""

    mode: str
    users: int  # StreamSpec.users of the generated stream
    events: int  # records in the generated stream: the cap of every Kafka scenario
    pipeline_seconds: float  # a pipeline scenario stops producing after the consumer ran this long
    rabbit_events: int  # records published (all before consuming) per RabbitMQ scenario
    latency_seconds: float  # paced production for the latency measurement...
    latency_warmup_s: float  # ...of which the first seconds are not counted
    dedup_keys: int  # keys in the dedup window (120 s x 100k/s = 12M)
    dedup_traced_keys: int  # keys for the tracemalloc cross-check
    scaling: bool  # 1M users vs 100k users, two processes vs one
    scaling_seconds: float
    replica_rows: int = 20_000  # rows written to the replica views (all before reading) per database
    max_ahead: int = 20_000
    max_ahead_bytes: int = 8 << 20  # all 16 partitions together: ~1.3 MB on the busiest one
    # raw rounds: as large as the cluster's retention safely allows, whatever the mode (each round
    # costs an idle fetch round trip, which is not timed but is waited for)
    raw_round: int = 20_000
    raw_round_bytes: int = 8 << 20
    audience_users: int = 1_000_000  # stored users the audience part counts


QUICK = Profile("quick", users=20_000, events=40_000, pipeline_seconds=2.0, rabbit_events=4_000,
                latency_seconds=3.0, latency_warmup_s=1.0, dedup_keys=1_000_000, dedup_traced_keys=100_000,
                scaling=False, scaling_seconds=0.0, max_ahead=5_000, max_ahead_bytes=2 << 20,
                audience_users=100_000)
FULL = Profile("full", users=100_000, events=600_000, pipeline_seconds=90.0, rabbit_events=60_000,
               latency_seconds=30.0, latency_warmup_s=3.0, dedup_keys=12_000_000, dedup_traced_keys=1_000_000,
               scaling=True, scaling_seconds=60.0, replica_rows=200_000)
