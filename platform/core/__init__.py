"""Shared plumbing of the Ray layer: config loading, storage, the Ray runtime, bundled samples."""
