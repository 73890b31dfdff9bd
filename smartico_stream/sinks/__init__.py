"""Sinks: dead letters (``dead_letters``), the outbox relay (``relay``) and the action sinks, one
module each (``jsonl``, ``webhook``, ``kafka``, ``rabbitmq``) on ``base``, joined by ``registry``."""
