"""The Qwen3-Omni thinker in Flax NNX: audio encoder, MoE decoder, and the model that joins them."""
