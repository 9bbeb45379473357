"""Variant generation and High-N decoder fine-tuning jobs."""
