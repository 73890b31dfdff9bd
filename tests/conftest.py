"""The test suite's root: fixtures come from plugin modules (as in Quix Streams' tests/conftest.py),
helpers that tests import directly from ``tests.support``.

- tests/fixtures/kafka.py: ``kafka`` (embedded, or a real cluster with
  SMARTICO_STREAM_TEST_KAFKA_BROKERS), ``make_settings``, ``producer``, ``broker``
- tests/fixtures/service.py: ``recording_engine``, ``run_service``, ``eventually``, ``scrape``
- tests/fixtures/crash.py: ``processes`` (service subprocesses, killed at teardown)
- tests/fixtures/postgres.py: ``postgres_dsn``, ``postgres_schema``, ``sql_store`` (each store kind, opened)
- tests/fixtures/rabbitmq.py: ``rabbitmq``, and how tests share the one broker under xdist
"""

from hypothesis import HealthCheck, settings

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.service",
    "tests.fixtures.crash",
    "tests.fixtures.postgres",
    "tests.fixtures.rabbitmq",
]


# Input-generation speed and per-example deadlines are wall-clock measurements: on a loaded machine
# (xdist workers, brokers and service subprocesses sharing two cores) they fail tests that are
# correct. Tests that care about speed measure it themselves.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")
