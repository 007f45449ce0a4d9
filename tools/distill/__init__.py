"""Distillation: reasoning traces from a teacher LLM (`generate_cot`) joined with audio into SFT records
(`build_sft`). See docs/serving.md, "Distillation"."""
