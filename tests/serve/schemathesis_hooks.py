"""schemathesis hooks for the served API (``tests/serve/schemathesis.toml``; not a test file).

Schema-valid requests that break a rule JSON Schema cannot state are left out of the positive
cases: the served schema states these rules in descriptions (``ankh_platform.serve.openapi``)
and the server answers them with a 422 naming the field, which ``tests/serve/test_serve.py``
pins. Everything else the schema allows must be served.
"""

from __future__ import annotations

from typing import Any

import schemathesis


def breaks_a_described_rule(path: str, body: Any) -> bool:
    """Rules between two fields (or a field and the data): described, not stated as schema."""
    if not isinstance(body, dict):
        return False
    if path == "/v1/score":  # mutants name the wild type's residues
        return body.get("mutants") is not None
    if path == "/v1/variants":  # spans lie within the parent
        return body.get("spans") is not None
    if path == "/v1/generate":
        # Without max_new_tokens, min_new_tokens meets its default (the model's): left out.
        max_new = body.get("max_new_tokens") or 0
        beams, returned = body.get("num_beams", 1), body.get("num_return_sequences", 1)
        return body.get("min_new_tokens", 0) > max_new or (beams > 1 and returned > beams)
    return False


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    meta = case.meta
    positive = meta is not None and meta.generation.mode.is_positive
    return not (positive and breaks_a_described_rule(case.path, case.body))
