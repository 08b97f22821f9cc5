# syntax=docker/dockerfile:1
# The Airflow image: Airflow 3.3.2 with its providers (requirements/airflow.txt: Kubernetes, Amazon, the FAB auth
# manager) and this repository's dags/, plugins/ and include/ (orchestration, mlsteps, config) under AIRFLOW_HOME
# /opt/airflow. The official Helm chart runs it for the API server, scheduler, DAG processor, triggerer and the
# KubernetesExecutor's worker pods (include/k8s/cluster/airflow-values.yaml), as UID 50000 with GID 0. The steps run
# in their own images: no torch, XGBoost, ONNX Runtime or model server here. Build it with docker/build.py
# (`--image airflow`); docker/README.md describes the build arguments and mounts.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Extra wheels for pip (a local wheel cache), empty unless the build names a folder: --build-context wheels=DIR.
FROM scratch AS wheels

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY requirements/airflow.txt constraints.txt /tmp/requirements/
# The optional secret `ca` is the CA bundle pip trusts instead of its own, for a TLS-intercepting proxy (--secret
# id=ca,src=FILE, e.g. the system bundle with the proxy's CA): mounted for this command only, never part of a
# layer. Wheels only: no compiler in any stage. pip runs from a virtualenv of its own, so the image's /opt/venv
# holds the pinned packages and nothing else (no pip to install more at run time). Every module is compiled to
# bytecode (pip's default): each worker pod and each DAG parse imports Airflow anew. That pip is first brought to the
# release constraints.txt pins: Debian's pip 23.0 misreads the extras of wheels with metadata 2.5 (apispec 6.10.1,
# which flask-appbuilder asks for with its `yaml` extra) and gives up resolving.
RUN --mount=type=bind,from=wheels,target=/tmp/wheels \
    --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/pip \
    && /opt/pip/bin/pip install --only-binary=:all: --constraint /tmp/requirements/constraints.txt pip \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --only-binary=:all: \
        --find-links /tmp/wheels --constraint /tmp/requirements/constraints.txt \
        --requirement /tmp/requirements/airflow.txt

FROM ${BASE_IMAGE}
# The user the chart runs every Airflow container as (securityContexts.pod: runAsUser 50000, runAsGroup 0), as in the
# apache/airflow image. AIRFLOW_HOME belongs to it and to group 0 (logs, and the airflow.cfg Airflow writes where the
# chart mounts none); the code under it stays root's, read-only to Airflow.
# The chart's probes run `/entrypoint airflow jobs check ...` and its log groomer `bash /clean-logs`, scripts of the
# apache/airflow image: /entrypoint runs its arguments, /clean-logs deletes logs older than the retention the chart
# sets (AIRFLOW__LOG_RETENTION_DAYS, 15 days by default) every 15 minutes. Their $ expand when they run, not here:
# hadolint ignore=SC2016
RUN useradd --uid 50000 --gid 0 --no-log-init --create-home --home-dir /home/airflow --shell /bin/bash airflow \
    && mkdir -p /opt/airflow/logs \
    && chown -R 50000:0 /opt/airflow \
    && chmod -R g+rwX /opt/airflow \
    && printf '%s\n' '#!/bin/sh' 'exec "$@"' > /entrypoint \
    && printf '%s\n' '#!/usr/bin/env bash' 'set -u' 'trap exit INT TERM' \
        'logs="${AIRFLOW_HOME:-/opt/airflow}/logs" days="${AIRFLOW__LOG_RETENTION_DAYS:-15}"' \
        'echo "Deleting logs in $logs older than $days days every 15 minutes"' \
        'while true; do' \
        '  find "$logs" -type f -name "*.log" -mtime +"$days" -delete' \
        '  find "$logs" -mindepth 1 -type d -empty -delete' \
        '  sleep 900 & wait $!' \
        'done' > /clean-logs \
    && chmod 755 /entrypoint /clean-logs
COPY --from=builder /opt/venv /opt/venv
COPY dags /opt/airflow/dags
COPY plugins /opt/airflow/plugins
COPY include/orchestration /opt/airflow/include/orchestration
COPY include/mlsteps /opt/airflow/include/mlsteps
COPY include/config /opt/airflow/include/config
# Bytecode of the project's own code, written now: the code is read-only at run time.
RUN /opt/venv/bin/python -m compileall -q /opt/airflow/dags /opt/airflow/plugins /opt/airflow/include
# orchestration and mlsteps import from include/, as locally (pyproject.toml finds both packages there); the DAGs
# and plugins folders are Airflow's defaults under AIRFLOW_HOME, which the chart also sets. MLflow asks GitPython for
# a source commit: the image has no git, which GitPython would report on every import.
ENV PATH=/opt/venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    PYTHONPATH=/opt/airflow/include \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /opt/airflow
USER 50000:0
# The chart probes each component itself (`airflow jobs check`, the API server's /api/v2/monitor/health).
HEALTHCHECK NONE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/airflow-continuous-training
LABEL org.opencontainers.image.title="mlsteps-airflow" \
      org.opencontainers.image.description="Airflow 3.3.2 with the continuous-training loop's DAGs, plugins and orchestration" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}"
ENTRYPOINT ["/entrypoint"]
CMD ["airflow", "version"]
