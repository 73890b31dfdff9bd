# Minimal image; the operations issue completes it (non-root, tini, probes are already usable).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY smartico_stream ./smartico_stream
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 smartico
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
EXPOSE 9108
ENTRYPOINT ["smartico-stream"]
CMD ["run", "--config", "/etc/smartico-stream/config.yaml"]
