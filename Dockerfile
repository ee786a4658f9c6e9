# syntax=docker/dockerfile:1
# EventFlow: one image for both process groups. fly.toml's [processes] pick the command:
#   web    = eventflow serve     (granian, ASGI, uvloop; PORT and EVENTFLOW_WEB_WORKERS from the env)
#   worker = eventflow consume   (the built-in consumers; scale with `fly scale count worker=N`)
# tests/unit/test_deploy_files.py checks this file against fly.toml and the Procfile.
ARG PYTHON_VERSION=3.11

# -- build: a virtualenv with EventFlow and its runtime dependencies (no dev or embedded extras) ---
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY app ./app
COPY consumers ./consumers
COPY templates ./templates
COPY ops/docker-entrypoint.sh ./ops/docker-entrypoint.sh
# Optional extras, e.g. `fly deploy --build-arg EXTRAS=otel,sentry` for trace export and Sentry.
ARG EXTRAS=""
# Editable install: the dashboard reads /app/templates next to the package, so the source tree is the
# install (copied to the same path below). Every dependency ships manylinux wheels: no compiler needed.
RUN pip install -e ".${EXTRAS:+[$EXTRAS]}" \
    && python -m compileall -q app consumers

# -- runtime: slim, the venv and the source tree, a non-root user --------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
RUN groupadd --system --gid 10001 eventflow \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin eventflow \
    && mkdir -p /data /tmp/eventflow-metrics \
    && chown eventflow:eventflow /data /tmp/eventflow-metrics
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8000 \
    EVENTFLOW_LOG_FORMAT=json \
    EVENTFLOW_METRICS_PORT=9091 \
    EVENTFLOW_WORKER_METRICS_PORT=9100 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/eventflow-metrics \
    EVENTFLOW_DATA_DIR=/data \
    EVENTFLOW_AUDIT_PATH=/data/audit \
    EVENTFLOW_ARCHIVE_PATH=/data/archive
WORKDIR /app
# 8000: the API and dashboard; 9091: web metrics and 9100: worker metrics (private network only).
EXPOSE 8000 9091 9100
# The entrypoint runs as root only to hand a freshly mounted volume (/data, root-owned on Fly) to the
# eventflow user, then drops to it (uid 10001) before starting the command. `docker run --user 10001`
# skips that step.
ENTRYPOINT ["/app/ops/docker-entrypoint.sh"]
CMD ["eventflow", "serve"]
