"""A real GCS stand-in for ``gs://`` paths: `gcp-storage-emulator` (PyPI) on 127.0.0.1, one process per use.

GCS itself cannot be reached from here, so tests that write or read ``gs://`` talk to this emulator, which
speaks the JSON and upload APIs of Cloud Storage over HTTP. The clients are the real ones, unchanged:

- tensorstore (the Orbax array writes) through ``TENSORSTORE_GCS_HTTP_URL`` with
  ``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (any token; the emulator checks none);
- gcsfs (etils epath, i.e. Orbax's directory operations, commit markers, JSON items, deletions) through
  ``STORAGE_EMULATOR_HOST``.

Known gaps of the emulator against the real service, which the tests therefore cannot cover (see
docs/deploy.md, "gs:// checkpoints"): the Storage Control API (gRPC; gcsfs asks it whether a bucket has a
hierarchical namespace or is zonal, so that detection is switched off under the emulator and every bucket is
flat); the ``x-goog-generation`` header on downloads, which tensorstore needs to rewrite an existing object
(added by tests/helpers/gcs_emulator_main.py, which runs the emulator); IAM and Workload Identity (every request is anonymous), and concurrency (the emulator serves one
request at a time, so nothing here measures parallel throughput).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from helpers.processes import free_port, stop_process


@dataclass(frozen=True)
class GcsEmulator:
    """A running emulator: its URL, its bucket, and the environment that points the clients at it."""

    url: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
            # gcsfs asks the Storage Control API (gRPC) whether a bucket is hierarchical or zonal; the
            # emulator has no such API, and against it the query retries for minutes. Off under the emulator
            # only (gcsfs reads this when first imported).
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def uri(self, *parts: str) -> str:
        """``gs://<bucket>/<parts...>``."""
        return "/".join([f"gs://{self.bucket}", *(p.strip("/") for p in parts)])


@contextlib.contextmanager
def gcs_emulator(bucket: str = "sawt-test", timeout: float = 30.0) -> Iterator[GcsEmulator]:
    """Starts `gcp-storage-emulator` (in memory) with ``bucket`` created; stops it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = ["start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", bucket]
    proc = subprocess.Popen(
        [sys.executable, "-m", "helpers.gcs_emulator_main", *server],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": tests_dir + os.pathsep + os.environ.get("PYTHONPATH", "")},
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gcp-storage-emulator did not come up on {url}")
            time.sleep(0.1)
        yield GcsEmulator(url, bucket)
    finally:
        stop_process(proc, timeout=10)


@contextlib.contextmanager
def pointed_at(emulator: GcsEmulator) -> Iterator[None]:
    """Sets the emulator's environment in this process (restored on exit)."""
    saved = {key: os.environ.get(key) for key in emulator.env}
    os.environ.update(emulator.env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def gcs_fs(emulator: GcsEmulator):
    """A gcsfs file system on the emulator (call inside `pointed_at`), as epath would make it."""
    import gcsfs

    return gcsfs.GCSFileSystem(skip_instance_cache=True)


def gcs_files(emulator: GcsEmulator, prefix: str) -> list[str]:
    """Every object under ``gs://<bucket>/<prefix>`` (names relative to the bucket), via gcsfs."""
    import gcsfs

    with pointed_at(emulator):
        fs = gcsfs.GCSFileSystem(skip_instance_cache=True)
        return sorted(fs.find(f"{emulator.bucket}/{prefix.strip('/')}"))
