# syntax=docker/dockerfile:1
#
# One image for every mtopt service, and a slim robot-agent image without torch.
#
#   docker build -t REGISTRY/mtopt:0.1.0 .                                   # services (default target)
#   docker build --target robot-agent -t REGISTRY/mtopt-robot-agent:0.1.0 .  # robots, no torch
#
# Services run as `python -m mtopt.<service>` (episode_store, model_registry, success_detector,
# log_replay, bellman, trainer), e.g. `docker run REGISTRY/mtopt:0.1.0 python -m mtopt.trainer`;
# `--help-config` after the module lists its environment variables. The robot image runs
# `mtopt-agent` (python -m mtopt_agent). Both run as the non-root user 10001 and work with a
# read-only root filesystem (writable: /tmp, /data, /var/lib/mtopt).
#
# TORCH_INDEX_URL selects the torch wheels of the service image: the default PyPI wheels carry
# CUDA (a GPU trainer needs them); for CPU-only clusters build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# to get a much smaller image. See docs/install.md.

# Exact, pinned base: Python 3.11 on Debian 12. Pin the digest too in your own builds
# (`docker buildx imagetools inspect python:3.11.13-slim-bookworm`).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ---- build stages: wheels into a virtual environment ------------------------------------------
FROM ${PYTHON_IMAGE} AS build-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip
WORKDIR /src
# Sources the package is built from (the generated gRPC stubs are committed under
# services/mtopt/v1, so no protoc run is needed here).
COPY pyproject.toml README.md ./
COPY services ./services
COPY robot_agent ./robot_agent

FROM build-base AS build-server
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch; fi \
 && /opt/venv/bin/pip install '.[server]' \
 && /opt/venv/bin/python -m compileall -q /opt/venv

FROM build-base AS build-robot
RUN /opt/venv/bin/pip install '.[robot]' \
 && /opt/venv/bin/python -m compileall -q /opt/venv \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

# ---- runtime base: non-root user, writable paths only where volumes go -------------------------
FROM ${PYTHON_IMAGE} AS runtime-base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor
RUN groupadd --system --gid 10001 mtopt \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin mtopt \
 && mkdir -p /data /var/lib/mtopt/spool \
 && chown -R 10001:10001 /data /var/lib/mtopt
WORKDIR /data

# ---- robot-agent: the torch-free agent (numpy, OpenCV, ONNX Runtime, gRPC) --------------------
FROM runtime-base AS robot-agent
COPY --from=build-robot /opt/venv /opt/venv
ENV MTOPT_AGENT_SPOOL_DIR=/var/lib/mtopt/spool
USER 10001:10001
EXPOSE 9100
ENTRYPOINT ["mtopt-agent"]

# ---- service image (default target): every service is `python -m mtopt.<service>` -------------
FROM runtime-base AS service
COPY --from=build-server /opt/venv /opt/venv
USER 10001:10001
EXPOSE 50051 50052 50053 50054 50055 50056 9090
# No ENTRYPOINT: the Helm chart (and `docker run IMAGE python -m mtopt.<service>`) names the
# service. The default command prints the store's settings as a smoke test of the image.
CMD ["python", "-m", "mtopt.episode_store", "--help-config"]
