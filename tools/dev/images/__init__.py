"""Container images in CI: build images/*.Dockerfile with podman from a local stand-in base, then smoke-run them.

The Dockerfiles are plain user Dockerfiles (``FROM python:3.12-slim-bookworm``). CI machines have no Docker
engine and reach no container registry, so this package makes a stand-in for that base locally (debootstrap
of the host's Debian release plus the machine's own CPython 3.12), tags it under the ``FROM`` name and builds
with ``podman build --pull=never``. Entry point: ``python -m tools.dev.images smoke`` (``make images-smoke``).
See docs/images.md.
"""
