"""Tests, one folder per capability (mirrors ankh/ and platform/)."""
