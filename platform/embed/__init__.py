"""Batch embedding of protein databases with Ray Data (``python -m jobs.embed``)."""
