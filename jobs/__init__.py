"""Entry points: ``python -m jobs.<name>``. Each parses flags/config and calls platform code."""
