"""Reference tools that run Hugging Face transformers (torch) in the separate `.venv-ref` environment."""
