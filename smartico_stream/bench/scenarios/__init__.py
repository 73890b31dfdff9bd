"""The bench's scenarios, each a coroutine taking the run's :class:`Env` and returning its part of
the report: ``raw``, ``pipeline`` / ``pipeline_postgres`` (and the latency part), ``rabbitmq_raw`` /
``rabbitmq_pipeline``, ``replica_pipeline`` / ``replica_pipeline_mysql``, ``dedup``, ``audience`` and ``scaling``."""

from smartico_stream.bench.scenarios.audience import scenario_audience
from smartico_stream.bench.scenarios.dedup import scenario_dedup
from smartico_stream.bench.scenarios.env import Env, Progress, completeness, guard, scenario_topics
from smartico_stream.bench.scenarios.pipeline import scenario_pipeline
from smartico_stream.bench.scenarios.rabbitmq import scenario_rabbit
from smartico_stream.bench.scenarios.raw import scenario_raw
from smartico_stream.bench.scenarios.replica import scenario_replica
from smartico_stream.bench.scenarios.scaling import scenario_processes, scenario_users

__all__ = [
    "Env",
    "Progress",
    "completeness",
    "guard",
    "scenario_audience",
    "scenario_dedup",
    "scenario_pipeline",
    "scenario_processes",
    "scenario_rabbit",
    "scenario_raw",
    "scenario_replica",
    "scenario_topics",
    "scenario_users",
]
