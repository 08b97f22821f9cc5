# syntax=docker/dockerfile:1
# The steps image (CPU): `python -m mlsteps <step>` for snapshot, validate, preprocess, evaluate, register, promote,
# score and drift. Pods run it as UID/GID 10001 with a read-only root filesystem and an emptyDir on /tmp.
# Build it with docker/build.py (make images); docker/README.md describes the build arguments and mounts.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Extra wheels for pip (a local wheel cache), empty unless the build names a folder: --build-context wheels=DIR.
FROM scratch AS wheels

# requirements/steps.txt only: no torch and no XGBoost. Evaluate, register, score and drift run the model package's
# ONNX model with ONNX Runtime; training has its own image (train.Dockerfile).
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY requirements/steps.txt constraints.txt /tmp/requirements/
# The optional secret `ca` is the CA bundle pip trusts instead of its own, for a TLS-intercepting proxy (--secret
# id=ca,src=FILE, e.g. the system bundle with the proxy's CA): mounted for this command only, never part of a
# layer. Wheels only: no compiler in any stage. pip runs from a virtualenv of its own, so the image's /opt/venv
# holds the pinned packages and nothing else (no pip to install more at run time).
# The packages' own test suites go (130 MB). Bytecode only for what the steps import, written by importing it: a
# step starts in about half the time it takes without (4.6 s instead of 9.4 s for these imports on 2 cores), for
# 90 MB instead of the 190 MB of compiling every installed module. A module missing from the list still works; it
# is compiled in memory each time a step imports it.
RUN --mount=type=bind,from=wheels,target=/tmp/wheels \
    --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --only-binary=:all: --no-compile \
        --find-links /tmp/wheels --constraint /tmp/requirements/constraints.txt \
        --requirement /tmp/requirements/steps.txt \
    && find /opt/venv -type d -name tests -prune -exec rm -rf {} + \
    && /opt/venv/bin/python -W ignore -c "import boto3, great_expectations, great_expectations.expectations, \
        kubernetes.client, kubernetes.config, mlflow.models, mlflow.pyfunc, onnxruntime, pandas, pyarrow.parquet, \
        pydantic, scipy.spatial.distance, scipy.stats, sklearn.metrics, typer, yaml"

FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 mlsteps \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlsteps
COPY --from=builder /opt/venv /opt/venv
COPY include/mlsteps /opt/app/mlsteps
COPY include/config /opt/app/config
# HOME and caches on /tmp, the one writable folder; nothing writes bytecode next to the read-only code. MLflow asks
# GitPython for a source commit: the image has no git, which GitPython would report on every run.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    GIT_PYTHON_REFRESH=quiet
WORKDIR /tmp
USER 10001:10001
# Step containers run to completion and serve nothing: no health check (NONE also drops one a base image brings).
HEALTHCHECK NONE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/airflow-continuous-training
LABEL org.opencontainers.image.title="mlsteps" \
      org.opencontainers.image.description="Steps of the continuous-training loop (CPU): python -m mlsteps <step>" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}"
CMD ["python", "-m", "mlsteps", "--help"]
