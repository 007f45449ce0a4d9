"""The decode engine and the OpenAI-compatible HTTP server; the model comes from `trainer.model`."""
