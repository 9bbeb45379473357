"""Distributed pretraining: Ray Train workers running a sharded JAX Ankh, checkpoints."""
