"""Offline tools: data synthesis and conversion, checkpoint conversion, distillation, manifests, demo."""
