"""The REST source (``source: rest``): operators' backends send events server-to-server over HTTP
(docs/rest.md).

* ``app``: the ASGI application (FastAPI on uvicorn): authentication by API key, limits, per-event
  validation with the pipeline's own adapter and dead-letter wording, answers.
* ``inbox``: accepted events are made durable in the store's inbox (group commit) before the answer.
* ``transport``: the inbox's partitions as the service's transport, read into the same batch
  checkpoint as Kafka, RabbitMQ and the replica views; leased and fenced like Kafka partitions.
"""
