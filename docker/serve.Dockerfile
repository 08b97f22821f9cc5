# syntax=docker/dockerfile:1
# The serving image: the model server (`python -m mlsteps.serve`: ONNX Runtime behind FastAPI/uvicorn on port 8080)
# with requirements/serve.txt only: no torch, no training or validation stack. The Deployment (include/k8s/
# model-server.yaml) runs it as UID/GID 10001 with a read-only root filesystem and an emptyDir on /tmp. Build it with
# docker/build.py (make images); docker/README.md describes the build arguments and mounts.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Extra wheels for pip (a local wheel cache), empty unless the build names a folder: --build-context wheels=DIR.
FROM scratch AS wheels

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
# binutils for `strip` (below), from Debian's archive: in the builder only, the runtime stage copies /opt/venv alone.
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends binutils=2.40-2 \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/serve.txt constraints.txt /tmp/requirements/
# The optional secret `ca` is the CA bundle pip trusts instead of its own, for a TLS-intercepting proxy (--secret
# id=ca,src=FILE, e.g. the system bundle with the proxy's CA): mounted for this command only, never part of a
# layer. Wheels only: no compiler in any stage. pip runs from a virtualenv of its own, so the image's /opt/venv
# holds the pinned packages and nothing else (no pip to install more at run time).
# What the server never loads goes: the packages' own test suites (64 MB); what only building against pyarrow needs
# (C++ headers, Cython sources, the linker-name copies of its libraries: the loader asks for libarrow_python.so.2500);
# Arrow Flight (32 MB: pyarrow.flight, an RPC framework nothing here imports); ONNX Runtime's shared C library (35 MB,
# for what links its C API, such as onnxruntime-genai: the Python module has the runtime built in). The debug symbols
# of uvloop, httptools, PyYAML and pyarrow's libraries (39 MB; `strip --strip-unneeded` keeps the dynamic symbols that
# loading and linking use; the import below loads every stripped library). Bytecode only for what the server imports,
# written by importing it; a module missing from the list is compiled in memory when it is first imported.
RUN --mount=type=bind,from=wheels,target=/tmp/wheels \
    --mount=type=secret,id=ca,required=false \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --only-binary=:all: --no-compile \
        --find-links /tmp/wheels --constraint /tmp/requirements/constraints.txt \
        --requirement /tmp/requirements/serve.txt \
    && find /opt/venv -type d -name tests -prune -exec rm -rf {} + \
    && packages=/opt/venv/lib/python3.11/site-packages \
    && rm -r "$packages"/pyarrow/*flight* \
    && rm -r "$packages"/pyarrow/include "$packages"/pyarrow/includes "$packages"/pyarrow/src \
        "$packages"/pyarrow/_pyarrow_cpp_tests.* "$packages"/pyarrow/libarrow*.so \
        "$packages"/pyarrow/libarrow*.so.*.*.* "$packages"/onnxruntime/capi/libonnxruntime.so.* \
    && find "$packages"/pyarrow \( -name "*.pyx" -o -name "*.pxd" -o -name "*.pxi" \) -delete \
    && find "$packages"/uvloop "$packages"/httptools "$packages"/yaml "$packages"/pyarrow -type f -name "*.so*" \
        -exec strip --strip-unneeded {} + \
    && /opt/venv/bin/python -W ignore -c "import boto3.s3.transfer, fastapi, httptools, numpy, onnxruntime, pandas, \
        prometheus_client.core, pyarrow.pandas_compat, pyarrow.parquet, pydantic, typer, uvicorn.loops.uvloop, \
        uvicorn.protocols.http.httptools_impl, yaml, yaml._yaml"

FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 mlsteps \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlsteps
COPY --from=builder /opt/venv /opt/venv
COPY include/mlsteps /opt/app/mlsteps
COPY include/config /opt/app/config
# HOME and caches on /tmp, the one writable folder; nothing writes bytecode next to the read-only code.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
# For Docker and Compose; Kubernetes ignores it and uses the Deployment's probes on the same endpoint. The start
# period matches the startup probe's 3 minutes for downloading and loading the model. urllib: the image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 CMD \
    ["python", "-c", "from urllib.request import urlopen; urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/airflow-continuous-training
LABEL org.opencontainers.image.title="mlsteps-serve" \
      org.opencontainers.image.description="Model server of the continuous-training loop (ONNX Runtime, FastAPI)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}"
CMD ["python", "-m", "mlsteps.serve"]
