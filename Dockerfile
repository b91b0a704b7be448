# seekrec image: the server, the online trainer and torchrun training from one image.
#
#   docker build -t seekrec:0.1.0 .                                       # CPU build of PyTorch (default)
#   docker build -t seekrec:0.1.0-cu130 --build-arg TORCH_VARIANT=cu130 .  # a CUDA build (see docs/deployment.md)
#
# TORCH_VARIANT names a wheel index under https://download.pytorch.org/whl/ (cpu, or a CUDA variant that
# index offers for TORCH_VERSION). CUDA wheels carry their CUDA libraries, so one slim base serves both;
# the host needs only the NVIDIA driver and container toolkit. tests/deploy/ keeps this file linted and
# its command, port and health check in step with `seekrec serve`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- build: a virtual environment with torch and seekrec[serve,redis] -----------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index: a bare `torch` requirement from PyPI would pull a multi-GB CUDA build
RUN pip install --no-cache-dir --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# a regular (not editable) install, so the runtime stage needs the venv only, not the source tree.
# DL3013 (pin versions in pip) is waived for this one line: it installs this repository, whose
# dependencies are pinned by range in pyproject.toml, not a package from an index
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[serve,redis]"

# -- runtime ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="seekrec" \
      org.opencontainers.image.description="Real-time deep-learning recommender: server, online trainer, training" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.seekrec.torch-variant="${TORCH_VARIANT}"
RUN groupadd --system --gid 10001 seekrec \
    && useradd --system --uid 10001 --gid seekrec --home-dir /home/seekrec --create-home \
        --shell /usr/sbin/nologin seekrec \
    && mkdir -p /srv/seekrec/registry /srv/seekrec/data /srv/seekrec/runs /srv/seekrec/online \
    && chown -R seekrec:seekrec /srv/seekrec
COPY --from=build /opt/venv /opt/venv
# the repository's named configs (training, online trainer), read with --config /opt/seekrec/configs/...
COPY configs /opt/seekrec/configs
# caches (matplotlib, torch.compile) go to /tmp, so a read-only root file system works with a /tmp volume
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
WORKDIR /srv/seekrec
EXPOSE 8000
# liveness of `seekrec serve` on its default port; containers running other commands disable it
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["seekrec"]
# Serving on 0.0.0.0 needs API keys: pass SEEKREC_API_KEYS (`seekrec keys new ROLE` makes them)
CMD ["serve", "--registry", "/srv/seekrec/registry", "--event-log", "sqlite:////srv/seekrec/events.db", \
     "--host", "0.0.0.0", "--port", "8000"]
