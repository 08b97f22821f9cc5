# syntax=docker/dockerfile:1
# The training image: `python -m mlsteps train` (one process per GPU through `python -m mlsteps.distributed`) on GPU
# nodes, with the CUDA builds of PyTorch and XGBoost. Pods run it as UID/GID 10001 with a read-only root filesystem,
# an emptyDir on /tmp and a memory-backed /dev/shm. Build it with docker/build.py (make images); docker/README.md
# describes the build arguments and mounts. TORCH_VARIANT=cpu gives the same image with the CPU builds (what CI
# builds: the CUDA wheels are gigabytes).
ARG BASE_IMAGE=python:3.11-slim-bookworm
# GPU nodes: the CUDA builds of torch and XGBoost; cpu for CI, where the CUDA wheels cannot be had.
ARG TORCH_VARIANT=cuda

# Extra wheels for pip (a local wheel cache), empty unless the build names a folder: --build-context wheels=DIR.
FROM scratch AS wheels

# The steps' requirements and what training adds (requirements/train.txt), with the XGBoost build of the variant.
FROM ${BASE_IMAGE} AS builder
# cuda: PyPI's Linux torch wheels, CUDA builds that bring the CUDA libraries as wheels (the node brings the driver),
# and XGBoost with CUDA (requirements/train-cuda.txt).
# cpu: the CPU build from PyTorch's index, asked for torch alone (an empty index means PyPI and the wheels context),
# and XGBoost's CPU build (requirements/train-cpu.txt).
ARG TORCH_VARIANT
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY requirements/steps.txt requirements/train.txt requirements/train-cuda.txt requirements/train-cpu.txt \
    constraints.txt /tmp/requirements/
# The optional secret `ca` is the CA bundle pip trusts instead of its own, for a TLS-intercepting proxy (--secret
# id=ca,src=FILE, e.g. the system bundle with the proxy's CA): mounted for this command only, never part of a
# layer. Wheels only: no compiler in any stage. pip runs from a virtualenv of its own, so the image's /opt/venv
# holds the pinned packages and nothing else (no pip to install more at run time).
# torch goes first, alone, and must be the variant asked for (-W ignore: it warns that numpy is not there yet).
RUN --mount=type=bind,from=wheels,target=/tmp/wheels \
    --mount=type=secret,id=ca,required=false \
    case "$TORCH_VARIANT" in \
        cuda) torch_index="" ;; \
        cpu) torch_index="$TORCH_CPU_INDEX_URL" ;; \
        *) echo "TORCH_VARIANT must be cuda or cpu, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac \
    && if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && python3 -m venv /opt/pip \
    && python3 -m venv --without-pip /opt/venv \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --only-binary=:all: --find-links /tmp/wheels \
        ${torch_index:+--extra-index-url "$torch_index"} \
        --constraint /tmp/requirements/constraints.txt torch \
    && /opt/venv/bin/python -W ignore -c "import sys, torch; built = 'cuda' if torch.version.cuda else 'cpu'; \
        sys.exit(built != sys.argv[1] and f'TORCH_VARIANT={sys.argv[1]} but pip installed torch {torch.__version__}, ' \
        f'a {built} build: check the wheels context and TORCH_CPU_INDEX_URL')" "$TORCH_VARIANT" \
    && /opt/pip/bin/pip --python /opt/venv/bin/python install --only-binary=:all: --find-links /tmp/wheels \
        --constraint /tmp/requirements/constraints.txt --requirement /tmp/requirements/steps.txt \
        --requirement /tmp/requirements/train.txt --requirement "/tmp/requirements/train-$TORCH_VARIANT.txt"

FROM ${BASE_IMAGE}
RUN groupadd --gid 10001 mlsteps \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlsteps
COPY --from=builder /opt/venv /opt/venv
COPY include/mlsteps /opt/app/mlsteps
COPY include/config /opt/app/config
# The worked example of a trainer of your own, beside mlsteps on the path: --model examples.trainers.sklearn_gbt:...
COPY examples /opt/app/examples
# HOME and caches on /tmp, the one writable folder; nothing writes bytecode next to the read-only code. MLflow asks
# GitPython for a source commit: the image has no git, which GitPython would report on every run. The NVIDIA
# container runtime mounts the driver libraries an image asks for; older runtimes mount only `utility` (no CUDA).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    GIT_PYTHON_REFRESH=quiet \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /tmp
USER 10001:10001
# Training containers run to completion and serve nothing: no health check (NONE also drops one a base image brings).
HEALTHCHECK NONE
ARG TORCH_VARIANT
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/example/airflow-continuous-training
LABEL org.opencontainers.image.title="mlsteps-train" \
      org.opencontainers.image.description="Training step (torch ${TORCH_VARIANT} build): python -m mlsteps train" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}"
CMD ["python", "-m", "mlsteps", "train", "--help"]
