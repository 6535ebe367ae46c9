# syntax=docker/dockerfile:1.7
# tfopt's CPU worker: Airflow's official image plus tfopt's locked dependencies (uv.lock).
# Build from the repository root:
#   docker build -f infra/docker/cpu-worker.Dockerfile -t tfopt-worker-cpu:0.1.0 .
# Serves Airflow's default queue (the CPU lane); the same image runs the api-server, scheduler,
# dag-processor and triggerer in infra/compose.
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

FROM ${AIRFLOW_IMAGE} AS lock
COPY --from=uv /uv /usr/local/bin/uv
WORKDIR /src
COPY pyproject.toml uv.lock ./
# Every runtime dependency at its locked version, with hashes; dev tools and tfopt itself left out.
RUN uv export --frozen --no-dev --no-emit-project --format requirements-txt \
        --output-file /tmp/requirements.txt

FROM ${AIRFLOW_IMAGE}
ENV UV_COMPILE_BYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2
COPY --from=lock /tmp/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/requirements.txt
COPY --chown=airflow:0 pyproject.toml README.md /opt/tfopt/
COPY --chown=airflow:0 tasks /opt/tfopt/tasks
RUN pip install --no-cache-dir --no-deps /opt/tfopt \
    && python -m compileall -q /home/airflow/.local/lib/python3.11/site-packages
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
# `airflow celery worker` reads its queue from the command line (infra/compose, infra/helm).
CMD ["celery", "worker", "--queues", "default"]
