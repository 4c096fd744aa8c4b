# syntax=docker/dockerfile:1
# imagegate's container image: the gateway and its shared-backend clients, no local engine.
#
#   docker build -t imagegate .                                  # the default image (cloud providers)
#   docker build --build-arg EXTRAS=otel -t imagegate:otel .     # + OpenTelemetry traces
#   docker build --build-arg EXTRAS=local -t imagegate:local .   # + the local engine (torch, diffusers)
#   docker build --build-arg EXTRAS=local \
#       --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu -t imagegate:local-cpu .
#
# EXTRAS is a comma-separated list of pyproject.toml's optional extras. `local` adds several GB
# (PyPI's Linux torch wheel bundles CUDA; run it with `--gpus all` and the NVIDIA container
# toolkit, or pass PyTorch's CPU index as above for a CPU-only image). Without Docker, the two
# README commands (`pip install -e .` and `imagegate serve`) are still the way to run it.
#
# Two stages: `build` turns the project and every dependency into wheels; `runtime` installs
# them from a bind mount (BuildKit, Docker's default builder), so neither pip's cache nor the
# wheels nor any build tool stays in the final image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# README.md is the package's readme (pyproject.toml), LICENSE its license file: both are metadata.
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels ".${EXTRAS:+[${EXTRAS}]}"

FROM ${PYTHON_IMAGE} AS runtime
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can check it and volumes can be
# prepared for it (deploy/kubernetes/deployment.yaml runs as the same ids).
RUN groupadd --system --gid 10001 imagegate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --shell /usr/sbin/nologin imagegate \
    && mkdir /data && chown 10001:10001 /data
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "imagegate${EXTRAS:+[${EXTRAS}]}"

# /data holds what an instance keeps for itself: the SQLite database and results when no shared
# backend is set, and always its usage journal (usage rows not yet in the database), so it is a
# volume that should outlive the container (docs/production.md). HOME is there too, for the
# Hugging Face cache of the local engine, and because the root filesystem may be read-only.
ENV IMAGEGATE_DATA_DIR=/data \
    HOME=/data \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8000

# The slim image has no curl: the standard library asks /health/live, which answers 200 while the
# process serves (readiness, which also checks the backends, is the orchestrator's business).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4)"]

CMD ["imagegate", "serve", "--host", "0.0.0.0", "--port", "8000"]
