# syntax=docker/dockerfile:1.7
#
# OCR sidecar image for the on-prem GPU host (RTX 5060 Ti class, Blackwell sm_120).
#
#   docker build -t ocr-sidecar:latest .                      # the sidecar: extra [server]
#   docker build --target backend -t ocr-backend:latest .     # ocr-backend: extra [backend]
#
# Base: the CUDA 13 base image. The locked torch wheel is a CUDA 13 build that brings its own
# cuBLAS/cuDNN/NCCL as pip packages, so the image only needs the CUDA runtime and the NVIDIA
# container hooks; the CUDA major must match the lock (tests/deploy/test_dockerfile.py checks it),
# because the base image's NVIDIA_REQUIRE_CUDA is what makes a too-old host driver fail loudly at
# `docker run` instead of torch silently falling back to the CPU. CUDA >= 12.8 is required for
# Blackwell; 13.x needs host driver >= 580.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9
ARG PYTHON_VERSION=3.11

FROM ${UV_IMAGE} AS uv

# ---- python-base: uv and a uv-managed CPython, shared by both builders ----------------------
FROM ${CUDA_IMAGE} AS python-base
ARG PYTHON_VERSION
COPY --from=uv /uv /uvx /bin/
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
RUN uv python install "${PYTHON_VERSION}"

# ---- builder: exactly uv.lock's [server] extra into /app/.venv (no backend, no dev) ---------
FROM python-base AS builder
ARG PYTHON_VERSION
# Dependencies first, from the lock alone: this layer survives source edits.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --frozen --no-dev --extra server --no-install-project --python "${PYTHON_VERSION}"
COPY pyproject.toml uv.lock README.md ./
COPY sidecar ./sidecar
COPY backend_client ./backend_client
COPY migrations ./migrations
# The project itself, as a regular (non-editable) install: the runtime stage needs no source tree.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra server --no-editable --python "${PYTHON_VERSION}"

# ---- backend: `ocr-backend` (migrations, CLI) with the [backend] extra: no torch, no FastAPI --
FROM python-base AS backend-builder
ARG PYTHON_VERSION
COPY pyproject.toml uv.lock README.md ./
COPY sidecar ./sidecar
COPY backend_client ./backend_client
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra backend --no-editable --python "${PYTHON_VERSION}"

FROM ${CUDA_IMAGE} AS backend
COPY --from=backend-builder /opt/python /opt/python
COPY --from=backend-builder /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
# The sidecar's uid, so both read the same key secret; no files of its own to write.
USER 1000:1000
ENTRYPOINT ["ocr-backend"]

# ---- runtime (the default target: the last stage) -------------------------------------------
FROM ${CUDA_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ocr-sidecar" \
      org.opencontainers.image.description="OCR through Ollama, BGE-M3 embeddings and reranking on a shared consumer GPU"

# Ubuntu 24.04 images ship a user `ubuntu` with uid 1000; the sidecar takes that uid instead.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && groupadd --gid 1000 sidecar \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sidecar \
    && mkdir -p /models /data/uploads \
    && chown 1000:1000 /models

# Interpreter and environment are root-owned and read-only for the service user.
COPY --from=builder /opt/python /opt/python
COPY --from=builder /app/.venv /app/.venv

# Every write goes to a mounted volume: the model cache under /models, scratch files under /tmp
# (a tmpfs in compose.yaml), so the container runs with a read-only root filesystem.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/models/huggingface \
    TORCH_HOME=/models/torch \
    XDG_CACHE_HOME=/tmp/cache \
    HOME=/tmp \
    HF_HUB_DISABLE_TELEMETRY=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    OCR_SIDECAR_HOST=0.0.0.0 \
    OCR_SIDECAR_PORT=8001 \
    OCR_SIDECAR_UPLOAD_BASE=/data/uploads

VOLUME ["/models"]
WORKDIR /app
USER 1000:1000
EXPOSE 8001

# No curl in the base image; the venv's Python does the probe. /live needs no key.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('OCR_SIDECAR_PORT', '8001') + '/live', timeout=4)"]

ENTRYPOINT ["sidecar"]
