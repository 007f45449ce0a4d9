"""sawt's foundation: config loading, durable file writes, progress bars and the error types.

Imports nothing else of sawt and nothing heavy (no jax), so every package, the CLI included, may import it.
"""
