"""Shared plumbing of the Ray layer: config loading (configlib), process setup (logging, the Ray
runtime) and where real data is (samples). Storage is ``ankh.storage``."""
