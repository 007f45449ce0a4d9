"""The sawt trainer and the one copy of the model code (`trainer.model`) that every other part imports."""
