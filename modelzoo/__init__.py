"""Checkpoints (Django app) and the pure PyTorch inference engine (modelzoo.engine)."""
