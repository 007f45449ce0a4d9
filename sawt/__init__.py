"""sawt: Arabic speech recognition with Qwen3-Omni on TPU. The `sawt` command lives in `sawt.cli`."""
