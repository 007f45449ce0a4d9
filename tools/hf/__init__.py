"""Hugging Face <-> Orbax checkpoint conversion: the key map, the HF file layout, safetensors I/O, the converter."""
