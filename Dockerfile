# smartico-stream image: multi-stage, slim, non-root, tini as PID 1.
#
#   docker build -t smartico-stream .
#   docker run --read-only --tmpfs /tmp -v $PWD/config.yaml:/etc/smartico-stream/config.yaml:ro \
#     -p 9108:9108 smartico-stream
#
# The build stage installs the package and its dependencies into a virtualenv (/opt/venv); the final
# stage copies only that virtualenv and tini onto a fresh slim base, so no compiler, pip cache or
# apt lists ship. tests/test_ops_dockerfile.py checks these properties without a Docker engine.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build ---------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# tini-static: a statically linked init, copied alone into the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes), then the package itself.
COPY pyproject.toml README.md ./
COPY smartico_stream ./smartico_stream
COPY adapters ./adapters
RUN pip install --no-compile . \
 && python -m compileall -q /opt/venv/lib \
 && smartico-stream --help >/dev/null

# -- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="smartico-stream" \
      org.opencontainers.image.description="Kafka/RabbitMQ consumer feeding the smartico rule engine" \
      org.opencontainers.image.source="https://github.com/smartico/smartico-stream"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1
RUN groupadd --system --gid 10001 smartico \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin smartico \
 && mkdir -p /etc/smartico-stream /var/smartico-stream \
 && chown 10001:10001 /var/smartico-stream
COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/smartico-stream
# /metrics, /healthz (liveness: poll-loop heartbeat), /readyz (joined the group).
EXPOSE 9108
# For docker / docker-compose; Kubernetes uses the Deployment's probes instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status != 200)"]
STOPSIGNAL SIGTERM
# Exec form: tini is PID 1, forwards SIGTERM to the service (which finishes the batch in hand,
# commits and leaves the group) and reaps children. -g: signal the whole process group.
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "smartico-stream"]
CMD ["run", "--config", "/etc/smartico-stream/config.yaml"]
