"""Evaluation: labelled tasks, embedders, probe heads, metrics and reports (``jobs.evaluate``)."""
