# sawt: the two commands a fresh machine needs are `make demo` and `make test`.
# Both run `make setup` first, which is idempotent: it installs only what is missing.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SAWT := $(VENV)/bin/sawt
# python3.12 may be a pyenv shim that refuses to run while another version is global, so probe each
# candidate by running it rather than trusting `command -v`.
PY312 := $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
APT_PACKAGES := espeak-ng prometheus
DEMO_DIR ?= build/demo
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test test-slow lint format lock clean goldens bench bench-demo bench-longform images-smoke pipeline-local

setup: system-deps $(VENV)/.installed

# System packages: espeak-ng speaks the demo corpus; prometheus (and promtool) back the monitoring tests.
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "error: need root (or sudo) to apt-get install$$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml requirements/lock.txt hatch_build.py trainer/data/_example_fast.c
	@if [ -z "$(PY312)" ]; then echo "error: python3.12 not found (tried PATH and ~/.pyenv/versions/3.12*)" >&2; exit 1; fi
	@test -x $(PY) || $(PY312) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

demo: setup
	$(PY) -m tools.demo --out $(DEMO_DIR)

# After `make demo`: WER on 3-minute recordings of the demo's test clips under the demo's model, silence
# cuts against fixed windows in the same run (bench/longform.py; figures in docs/serving.md).
bench-longform: setup
	$(PY) -m bench.longform --checkpoint $(DEMO_DIR)/run --data $(DEMO_DIR)/arrayrecord \
		--tokenizer-dir $(DEMO_DIR)/tfrecord/tokenizer --json $(DEMO_DIR)/longform.json

test: setup lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The slow suite includes live parity runs against HF PyTorch, so it builds the reference venv too.
test-slow: setup $(VENV_REF)/.installed
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The rendered workloads' pods run as local processes in pipeline order (data-convert -> ckpt-convert -> train on
# 4 "hosts" -> batch-infer -> serve), gs:// on the GCS emulator; prints what each workload did (tens of minutes on
# 2 cores). tests/e2e/test_pipeline_local.py says what stands in for the cluster.
pipeline-local: setup
	$(PY) -m pytest tests/e2e/test_pipeline_local.py -m "" -s -p no:cacheprovider $(PYTEST_ARGS)

# Re-pin every transitive dependency from the current venv.
lock:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' | sort > requirements/lock.txt
	$(PY) -m tools.dev.lock

# Build images/*.Dockerfile with podman from a locally made stand-in base, then smoke-run both images
# (docs/images.md). Needs root on Debian; SAWT_SKIP_IMAGES=1 skips it, loudly.
images-smoke: setup
	$(PY) -m tools.dev.images smoke

# Model parity goldens: tiny random HF Qwen3-Omni thinkers + reference outputs (tests/goldens/model/), and
# the release-shaped fixture (a tiny full Qwen3-Omni in the published release's layout, tests/goldens/release/).
# transformers' modelling needs torch, whose CPU wheels exist here only for Python 3.11: a separate venv.
VENV_REF := .venv-ref
goldens: $(VENV_REF)/.installed
	$(VENV_REF)/bin/python tools/dev/hf_reference/make_goldens.py --out tests/goldens/model
	$(VENV_REF)/bin/python tools/dev/hf_reference/release_fixture.py --out tests/goldens/release

$(VENV_REF)/.installed:
	@test -x $(VENV_REF)/bin/python || python3.11 -m venv $(VENV_REF)
	$(VENV_REF)/bin/pip install -q torch==2.13.0 transformers==5.24.0 safetensors numpy
	@touch $@

clean:
	rm -rf build .pytest_cache .ruff_cache

# Every figure of docs/benchmarks.md, re-measured (on a quiet machine: load average below half the cores,
# or the JSON says "loaded": true). One suite after the other, ~20-30 min on 2 cores; JSON under build/bench/.
BENCH_DIR ?= build/bench
bench: setup $(VENV_REF)/.installed
	@mkdir -p $(BENCH_DIR)
	$(SAWT) bench data --json $(BENCH_DIR)/data.json
	$(SAWT) bench model --json $(BENCH_DIR)/model.json
	$(SAWT) bench serve --json $(BENCH_DIR)/serve.json
	$(SAWT) bench pack --json $(BENCH_DIR)/pack.json

# The demo's training time and WER (a fresh run of `make demo`'s training; docs/training.md), ~15 min.
bench-demo: setup
	@mkdir -p $(BENCH_DIR)
	$(SAWT) bench demo --out $(DEMO_DIR) --json $(BENCH_DIR)/demo.json

# AOT plans of the 30B-A3B train step on a v4-32 (slow: several minutes of compile each; docs/benchmarks.md).
# The preset freezes the audio encoder, so the full fine-tunes say train.freeze=[] themselves.
PLAN_30B := $(SAWT) plan --config qwen3-omni-30b-a3b --topology v4-32 --seq 512 --frames 3000
.PHONY: plan-30b plan-guard plan-guard-update
plan-30b: setup
	@mkdir -p build/plans
	$(PLAN_30B) --mesh fsdp=16 --json build/plans/full_bf16_fsdp16.json train.global_batch_size=32 'train.freeze=[]'
	$(PLAN_30B) --mesh fsdp=16 --json build/plans/frozen_audio_fsdp16.json train.global_batch_size=32 'train.freeze=[audio_encoder]'
	$(PLAN_30B) --mesh fsdp=4,expert=4 --json build/plans/frozen_audio_fsdp4_expert4.json train.global_batch_size=32 'train.freeze=[audio_encoder]'
	$(PLAN_30B) --mesh fsdp=16 --json build/plans/full_fp32_fsdp16.json train.global_batch_size=32 'train.freeze=[]' train.precision.param_dtype=float32

# The plan guard: run `make plan-guard` before every change to the train step, the model or the sharding.
# It compiles a reduced 30B-shaped step (real widths, 2+2 layers) for a v4-32 (~5-15 min on 2 cores) and
# fails when its per-chip TPU memory leaves the committed figures (tests/goldens/plan/); a deliberate
# change re-records them with `make plan-guard-update` (tools/plan_guard.py).
plan-guard: setup
	$(PY) -m tools.plan_guard

plan-guard-update: setup
	$(PY) -m tools.plan_guard --update

# PNG snapshots of the Grafana dashboards (docs/img/) from a fresh tiny training run + loaded server scraped
# by a local Prometheus (tools/dev/monitoring_stack.py; a few minutes on CPU).
.PHONY: dashboards-png
dashboards-png: setup
	$(PY) -m tools.dev.dashboard_snapshot --live --out-dir docs/img
