# sawt server image: the OpenAI-compatible transcription server (`sawt serve`) on TPU, or CPU where no TPU is found.
#
# Build from the repository root, on a workstation or in Cloud Build:
#   docker build -f images/server.Dockerfile -t sawt-server:dev .
# Run (CPU), serving a model checkpoint directory mounted at /model:
#   docker run --rm -p 8000:8000 -v "$PWD/ckpt:/model:ro" sawt-server:dev
# See docs/images.md.
#
# The `base` and `wheel` stages are word for word the same in images/trainer.Dockerfile, so a builder that
# caches layers builds them once for both images (tests/images/test_dockerfiles.py keeps them equal); the
# `deps` stage installs only what this image runs: requirements/server.txt, the closure of sawt[serve,tpu]
# in the lock (docs/images.md).

# ---- base: interpreter, tini, non-root user and an empty virtual environment -------------------------------
FROM python:3.12-slim-bookworm AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# tini is PID 1: it forwards SIGTERM to the Python process (and its group, -g) and reaps zombies.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A numeric UID, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 1000 sawt \
    && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin sawt
RUN python -m venv /opt/venv

# ---- wheel: our own code, built into a wheel with a C compiler that the final image does not carry --------
FROM base AS wheel
# gcc + libc6-dev compile trainer/data/_example_fast.c, the C Example decoder (hatch_build.py); Python.h
# comes with the base image. This stage is the same in both Dockerfiles, so a layer cache builds it once.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY requirements/build.txt /opt/sawt/build.txt
RUN pip install --no-deps -r /opt/sawt/build.txt && pip check
WORKDIR /opt/sawt/src
COPY pyproject.toml README.md hatch_build.py ./
COPY core/ core/
COPY sawt/ sawt/
COPY k8s/ k8s/
COPY trainer/ trainer/
COPY inference_server/ inference_server/
COPY tools/ tools/
# hatchling (requirements/build.txt) is the only build dependency, so nothing else is downloaded here.
# SAWT_REQUIRE_FAST_CODEC=1: a missing compiler fails the build instead of making a pure-Python wheel.
RUN SAWT_REQUIRE_FAST_CODEC=1 pip wheel --no-deps --no-build-isolation --wheel-dir /opt/sawt/wheels .

# ---- deps: this image's pinned dependencies (changes rarely) ---------------------------------------------
FROM base AS deps
# Exactly the closure of sawt[serve,tpu], libtpu included (jax[tpu]): one image for TPU and CPU. --no-deps
# and `pip check`: a requirement missing from the file fails the build instead of being fetched unpinned.
COPY requirements/server.txt /opt/sawt/requirements.txt
RUN pip install --no-deps -r /opt/sawt/requirements.txt && pip check

# ---- server: our own code (changes often) -----------------------------------------------------------------
FROM deps AS server
COPY --from=wheel /opt/sawt/wheels/ /opt/sawt/wheels/
# The wheel holds the compiled Example decoder; the check makes sure the image runs it, not the fallback.
# Our own installed packages (only those, never the dependencies) belong to the runtime user, so that
# skaffold's dev-profile file sync can copy edited .py files over them; `sawt serve --reload` then restarts
# the server (docs/deploy.md, step 7). Outside that profile nothing writes there.
RUN pip install --no-deps /opt/sawt/wheels/sawt-*.whl \
    && rm -rf /opt/sawt/wheels \
    && sawt --help >/dev/null \
    && python -c 'from trainer.data.example import FAST_DECODER_IMPL as impl; assert impl == "c", impl' \
    && site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')" \
    && chown -R 1000:1000 "$site/core" "$site/inference_server" "$site/trainer" "$site/sawt" "$site/tools"

USER 1000:1000
WORKDIR /home/sawt
EXPOSE 8000
# On SIGTERM the server stops taking requests, finishes those in flight, and exits.
# tini stays PID 1 whatever command is given: `docker run IMAGE sawt ...`, or Kubernetes `args:` (not
# `command:`, which would replace tini).
ENTRYPOINT ["/usr/bin/tini", "-g", "--"]
CMD ["sawt", "serve", "--checkpoint", "/model", "--host", "0.0.0.0", "--port", "8000"]

ARG SAWT_VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.title="sawt-server" \
      org.opencontainers.image.description="sawt: OpenAI-compatible Arabic speech recognition server for Qwen3-Omni (thinker) on TPU (JAX, CPU fallback)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${SAWT_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.base.name="python:3.12-slim-bookworm"
