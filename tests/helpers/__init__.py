"""Helpers shared by several test areas (importable as ``helpers.*``: tests/conftest.py puts tests/ on sys.path).

- `helpers.checkpoint`: `make_tiny_checkpoint`, a real model checkpoint with random tiny weights (also the
  session fixture ``tiny_checkpoint`` in tests/conftest.py, and bench/serve.py);
- `helpers.serving`: a real uvicorn server in a thread, a free port, WAV bytes;
- `helpers.speech_split`: a small ArrayRecord split in the seed schema.
"""
