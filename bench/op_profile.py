"""Where the time of the `small` train step and decode go on CPU: a jax.profiler trace mapped to the model.

    python -m bench.op_profile train|decode [--steps N] [--top N] [--json FILE] [OVERRIDE ...]

Runs the same work as `sawt bench model` (bench/model.py: the bench's train batch, forward + backward of the
loss; greedy generation at batch 8), traces `--steps` calls after a warm-up, and maps every XLA:CPU thunk in
the trace to its HLO instruction's metadata in the compiled program: the model file it came from
(`audio_encoder`, `attention`, `moe`, ...), forward or backward, and the op kind (`ynn_fusion` is a
matmul fused by XNNPACK, `copy`/`transpose` are layout copies). It prints each group's share of the op time.

Shares are what this is for: they hold on a loaded machine (every op slows about alike), where absolute
milliseconds and ratios against a peer do not. The load average is printed with them.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

_KIND = re.compile(r"\.\d+$")
# A thunk is an HLO instruction name; control-flow thunks contain other thunks (counted once, inside).
_OP = re.compile(r"^[A-Za-z][\w.\-]*$")
_CONTAINERS = {"while", "conditional", "call"}
_NAME = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_OP_NAME = re.compile(r'metadata=\{[^}]*op_name="([^"]*)"')
_ROOT_OPCODE = re.compile(r"^\s*ROOT %?[\w.\-]+ = \S+ ([\w\-]+)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def hlo_metadata(hlo_text: str) -> dict[str, dict[str, str]]:
    """Instruction name -> {"op_name": its metadata's op_name} from compiled HLO text.

    A fusion without metadata of its own (layout passes make some) gets that of its fused computation's
    last instruction that has one (usually the root).
    """
    out: dict[str, dict[str, str]] = {}
    calls: dict[str, str] = {}
    computation_op: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        head = _COMPUTATION.match(line)
        if head:
            current = head.group(1)
            continue
        name = _NAME.match(line)
        if not name:
            continue
        op = _OP_NAME.search(line)
        root = _ROOT_OPCODE.match(line)
        if root and current and current not in computation_op:
            computation_op[current] = f"(no metadata: {root.group(1)})"
        if op:
            out[name.group(1)] = {"op_name": op.group(1)}
            if current:
                computation_op[current] = op.group(1)
        callee = _CALLS.search(line)
        if callee:
            calls[name.group(1)] = callee.group(1)
    for name, callee in calls.items():
        if name not in out and callee in computation_op:
            out[name] = {"op_name": computation_op[callee]}
    return out


# The model's modules whose functions and `__call__`s get a named scope while profiling (`scoped_model`).
MODEL_MODULES = (
    "trainer.model.layers",
    "trainer.model.audio_encoder",
    "trainer.model.attention",
    "trainer.model.moe",
    "trainer.model.decoder",
    "trainer.model.thinker",
    "trainer.model.loss",
    "trainer.model.generate",
)
_SCOPE = re.compile(r"\bm:([\w.]+)")


def scoped_model() -> None:
    """Wraps every function and module `__call__` of the model code in `jax.named_scope("m:module.name")`.

    The compiled HLO's `op_name` then names the model function each instruction came from (and keeps it
    through autodiff: the backward of a scope is `transpose(jvp(...))/m:...`). Profiling only: the
    scopes change names, not the program.
    """
    import functools
    import importlib
    import inspect

    import jax

    def wrap(fn, label):
        @functools.wraps(fn)
        def scoped(*args, **kwargs):
            with jax.named_scope(f"m:{label}"):
                return fn(*args, **kwargs)

        scoped._sawt_scoped = True
        return scoped

    mods = [importlib.import_module(m) for m in MODEL_MODULES]
    replaced = {}
    for mod in mods:
        short = mod.__name__.rsplit(".", 1)[1]
        for name, obj in list(vars(mod).items()):
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__ and not name.startswith("__"):
                replaced[obj] = wrap(obj, f"{short}.{name}")
            elif inspect.isclass(obj) and obj.__module__ == mod.__name__ and "__call__" in vars(obj):
                call = vars(obj)["__call__"]
                if not getattr(call, "_sawt_scoped", False):
                    obj.__call__ = wrap(call, f"{short}.{name}")
    for mod in mods:  # rebind the functions wherever the model imported them by name
        for name, obj in list(vars(mod).items()):
            if inspect.isfunction(obj) and obj in replaced:
                setattr(mod, name, replaced[obj])


def classify(name: str, meta: dict[str, str] | None) -> tuple[str, str, str, str]:
    """(model component, innermost model function, forward/backward, op kind) of one thunk.

    The component is the innermost scope outside the generic layers (`layers.Linear` inside
    `attention.TextAttention` counts for attention).
    """
    kind = _KIND.sub("", name)
    op = (meta or {}).get("op_name", "")
    scopes = _SCOPE.findall(op)
    if not scopes:
        return "(unscoped)", op or "(unscoped)", "?", kind
    component = next((s for s in reversed(scopes) if not s.startswith("layers.")), scopes[-1])
    direction = "backward" if "transpose(" in op else "forward"
    return component, scopes[-1], direction, kind


def summarise(events: list[tuple[str, float]], meta: dict[str, dict[str, str]], calls: int) -> dict:
    """Per-call op time and each group's share, from (thunk name, microseconds) pairs."""
    ops = [(n, d) for n, d in events if _OP.match(n) and _KIND.sub("", n) not in _CONTAINERS]
    total = sum(d for _, d in ops)
    groups: dict[str, collections.Counter] = {
        k: collections.Counter() for k in ("component", "component_direction", "function", "kind")
    }
    for name, dur in ops:
        component, function, direction, kind = classify(name, meta.get(name))
        groups["component"][component] += dur
        groups["component_direction"][f"{component} {direction}"] += dur
        groups["function"][function] += dur
        groups["kind"][kind] += dur
    top = collections.Counter()
    for name, dur in ops:
        top[name] += dur
    return {
        "op_ms_per_call": total / 1e3 / calls,
        "ops_per_call": len(ops) // calls,
        "share": {
            g: {k: round(v / total, 4) for k, v in c.most_common()} for g, c in groups.items() if total
        },
        "top_ops": [
            {
                "name": n,
                "ms_per_call": round(d / 1e3 / calls, 3),
                "share": round(d / total, 4),
                "op_name": meta.get(n, {}).get("op_name", ""),
            }
            for n, d in top.most_common(25)
        ],
    }


def _work(mode: str, overrides: list[str]):
    """(run, compiled HLO text, tokens per call) for the bench's train step or greedy decode."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from bench.model import asr_batch, prompt_only
    from trainer.config import load_experiment
    from trainer.model.thinker import Thinker

    scoped_model()
    experiment = load_experiment("small", overrides)
    cfg = experiment.model
    model = Thinker(cfg, rngs=nnx.Rngs(0))
    if mode == "train":
        from trainer.model.loss import thinker_loss

        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        aux = experiment.train.aux_loss_coef
        batch = jax.tree.map(jnp.asarray, asr_batch(cfg, 4, 4.0, 24))

        @jax.jit
        def step(params, batch):
            def loss_fn(p):
                return thinker_loss(nnx.merge(graphdef, p, rest)(batch), batch, aux)[0]

            return jax.value_and_grad(loss_fn)(params)

        hlo = step.lower(params, batch).compile().as_text()
        return (lambda: step(params, batch)), hlo, int(batch["token_mask"].sum())
    from trainer.model import generate as gen

    new = 32
    batch = prompt_only(asr_batch(cfg, 8, 3.0, 4, seed=1))
    arrays = {k: jnp.asarray(v) for k, v in batch.items() if k != "meta" and v is not None}
    # The arguments `greedy_generate` passes, so the trace is of its program (per-layer weights included).
    args = gen.generate_args(model, arrays, new, (), arrays["input_ids"].shape[1] + new)
    hlo = gen._generate_jit.lower(*args).compile().as_text()
    return (lambda: gen._generate_jit(*args)), hlo, 8 * new


def profile(mode: str, overrides: list[str], steps: int) -> dict:
    import jax

    load_before = os.getloadavg()
    run, hlo, tokens = _work(mode, overrides)
    jax.block_until_ready(run())
    meta = hlo_metadata(hlo)
    with tempfile.TemporaryDirectory(prefix="sawt-profile-") as out:
        t0 = time.perf_counter()
        with jax.profiler.trace(out):
            for _ in range(steps):
                jax.block_until_ready(run())
        wall = (time.perf_counter() - t0) / steps
        (path,) = glob.glob(f"{out}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = [(e["name"], float(e["dur"])) for e in trace["traceEvents"] if e.get("ph") == "X"]
    result = summarise(events, meta, steps)
    result.update(
        mode=mode,
        overrides=overrides,
        steps=steps,
        tokens_per_call=tokens,
        wall_s_per_call_traced=wall,
        load_average_before=load_before[0],
        load_average_after=os.getloadavg()[0],
    )
    return result


def _print(r: dict, top: int) -> None:
    print(
        f"{r['mode']}: {r['ops_per_call']} ops per call, op time {r['op_ms_per_call']:.1f} ms per call "
        f"(traced wall {r['wall_s_per_call_traced'] * 1e3:.0f} ms; load average {r['load_average_before']:.2f}"
        f" before, {r['load_average_after']:.2f} after: shares, not speeds)"
    )
    for group in ("component", "component_direction", "function", "kind"):
        print(f"  share by {group}:")
        for k, v in list(r["share"][group].items())[:top]:
            print(f"    {100 * v:5.1f}%  {k}")
    print("  top ops:")
    for o in r["top_ops"][:top]:
        print(f"    {100 * o['share']:5.1f}%  {o['name']:<30} {o['op_name'][-90:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.op_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("train", "decode"))
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the small preset's model")
    parser.add_argument("--steps", type=int, default=3, help="traced calls after the warm-up")
    parser.add_argument("--top", type=int, default=12, help="rows per table")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    result = profile(
        args.mode, [f"model.{o}" if not o.startswith("model.") else o for o in args.overrides], args.steps
    )
    _print(result, args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
