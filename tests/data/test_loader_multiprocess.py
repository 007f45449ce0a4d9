"""The loader under real multi-process JAX: two processes joined with `jax.distributed.initialize` on
127.0.0.1 assemble global batches with `jax.make_array_from_process_local_data`, as the trainer does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    coordinator, pid, data_dir, tok_dir, out = sys.argv[1:]
    jax.distributed.initialize(coordinator, num_processes=2, process_id=int(pid), initialization_timeout=120)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from trainer.data.config import DataConfig
    from trainer.data.loader import make_loader

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = 2
    loader = make_loader(DataConfig(dir=data_dir, num_threads=1), tok_dir, "train", jax.process_index(),
                         jax.process_count(), 0, rows, num_epochs=1)
    count = jax.jit(lambda mask: mask.sum(), out_shardings=NamedSharding(mesh, P()))
    steps = []
    for batch in loader:
        mask = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), batch["token_mask"])
        steps.append({
            "global_shape": list(mask.shape),
            "global_tokens": int(count(mask)),
            "local_tokens": int(batch["token_mask"].sum()),
            "sample_ids": [s for s in batch["meta"]["sample_id"] if s],
        })
    json.dump(steps, open(out, "w"))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_jax_processes_build_consistent_global_batches(corpus, tmp_path):
    coordinator = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                coordinator,
                str(i),
                str(corpus.arrayrecord),
                str(corpus.tokenizer),
                str(outs[i]),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        try:
            output, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, output[-3000:]
    p0, p1 = (json.loads(o.read_text()) for o in outs)
    assert len(p0) == len(p1) > 1
    seen: list[str] = []
    for a, b in zip(p0, p1, strict=True):
        assert a["global_shape"] == b["global_shape"] and a["global_shape"][0] == 4
        # The jitted reduction over the global array sees both processes' rows.
        assert a["global_tokens"] == b["global_tokens"] == a["local_tokens"] + b["local_tokens"]
        assert not set(a["sample_ids"]) & set(b["sample_ids"])
        seen += a["sample_ids"] + b["sample_ids"]
    assert len(seen) == len(set(seen))
    from trainer.data.loader import read_index

    assert len(seen) == len(read_index(corpus.arrayrecord, "train"))
