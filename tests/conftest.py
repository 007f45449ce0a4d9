"""Test-wide set-up: JAX on CPU with 8 fake devices, so sharding code runs as it would on a slice."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax

jax.config.update("jax_num_cpu_devices", 8)
