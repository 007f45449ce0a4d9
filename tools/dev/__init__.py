"""Dev-only tooling, not shipped in the wheel: image smoke runs, golden and fixture builders, the monitoring stack.

Everything here runs from a source checkout (`make setup`), often with peers that are not sawt dependencies
(torch in `.venv-ref`, TensorFlow in `.venv-tf`, podman). Product code never imports it; tests and bench do.
"""
