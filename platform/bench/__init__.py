"""Benchmarks behind ``python -m jobs.benchmark <what>``: one JSON line each, with its reference."""
