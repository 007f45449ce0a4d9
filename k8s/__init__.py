"""sawt's deployment wing: typed values, the TPU table, rendering, lint, the cluster client, dashboards, alerts.

The Python modules sit beside the data they read (templates/, values/, dashboards/, alerts/), so an installed
wheel renders as a clone does. Imports only `core`: `sawt deploy` works without jax, transformers or
matplotlib installed.
"""
