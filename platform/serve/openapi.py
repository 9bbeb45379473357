"""The served OpenAPI schema states what the server enforces, from the running config.

The pydantic request models say the types; the limits (``RequestLimits``), the alphabet
(``ankh.tokenizer``), the served layers and the cross-field rules of ``Ankh.generate`` are
checked by the ingress, the deployments and ``ankh.GenerationConfig`` (which keep
their own messages and 413s). :func:`constrain` writes the same rules into the schema, so a
schema-generated client validates up front: a schema-valid request is accepted and a
schema-invalid one refused (``tests/serve/test_fuzz.py`` fuzzes both directions).

Not expressible in JSON Schema, so stated in the descriptions only: the total residues of a
``/v1/score`` request (``max_score_residues``), mutants naming the wild type's residues,
``spans`` within the parent, and ``min_new_tokens`` <= ``max_new_tokens`` and
``num_return_sequences`` <= ``num_beams`` (``GENERATE_NOTES``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ankh.tokenizer import AnkhTokenizer
from ankh_platform.serve import openai_api, tei_api
from ankh_platform.serve.schema import RequestLimits

WS = "[ \\t\\r\\n]*"  # the whitespace the tokenizer strips (ankh.tokenizer._WS)
MUTANT = "^[A-Z][1-9][0-9]*[A-Z](?::[A-Z][1-9][0-9]*[A-Z])*$"
Patch = Callable[[dict[str, Any]], None]


def residue_pattern(letters: str, max_residues: int | None, sentinels: int = 0) -> str:
    """1..max_residues residues (either case), whitespace anywhere; with ``sentinels`` > 0 a
    ``<extra_id_k>`` (k < sentinels) counts as one residue too (``schema.check_sequences``)."""
    unit = "[" + "".join(sorted(set(letters.upper() + letters.lower()))) + "]"
    if sentinels:
        ids = "|".join(str(k) for k in range(sentinels - 1, -1, -1))
        unit = f"(?:{unit}|<extra_id_(?:{ids})>)"
    count = f"{{1,{max_residues}}}" if max_residues else "+"
    return f"^{WS}(?:{unit}{WS}){count}$"


def _branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property (pydantic writes Optional as anyOf [.., null])."""
    alts = prop.get("anyOf", [prop])
    return [a for a in alts if a.get("type") != "null"]


def _strings(pattern: str, max_items: int | None) -> Patch:
    """Constrain a string, a list of strings, or either (``input``/``inputs``)."""

    def patch(prop: dict[str, Any]) -> None:
        for alt in _branches(prop):
            if alt.get("type") == "string":
                alt["pattern"] = pattern
            elif alt.get("type") == "array":
                alt["items"] = {"type": "string", "pattern": pattern}
                if max_items is not None:
                    alt["maxItems"] = max_items

    return patch


_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}


def _json_bounds(node: Any) -> None:
    """pydantic leaves ``Field(gt=0)`` on a union (``float | int``) or a validated ``Int`` as
    non-standard ``gt``/``ge`` keys, which clients ignore: restate them as JSON Schema."""
    if isinstance(node, list):
        for x in node:
            _json_bounds(x)
        return
    if not isinstance(node, dict):
        return
    bounds = {_BOUNDS[k]: node.pop(k) for k in list(node) if k in _BOUNDS}
    targets = [node] if node.get("type") in ("number", "integer") else node.get("anyOf", [])
    for alt in targets:
        if alt.get("type") in ("number", "integer"):
            alt.update(bounds)
    for v in node.values():
        _json_bounds(v)


def _maximum(value: int) -> Patch:
    def patch(prop: dict[str, Any]) -> None:
        for alt in _branches(prop):
            alt["maximum"] = value

    return patch


def _enum(values: list[Any]) -> Patch:
    def patch(prop: dict[str, Any]) -> None:
        for alt in _branches(prop):
            alt.pop("minimum", None)
            alt["enum"] = list(values)

    return patch


def _vectors(max_items: int, dims: set[int]) -> Patch:
    """At most ``max_items`` query vectors, each of the served indexes' one dimension."""

    def patch(prop: dict[str, Any]) -> None:
        for alt in _branches(prop):
            alt["maxItems"] = max_items
            if len(dims) == 1:  # several indexes of different dimensions: a 422 names it
                alt["items"]["minItems"] = alt["items"]["maxItems"] = next(iter(dims))

    return patch


def _null(prop: dict[str, Any]) -> None:
    """A field accepted for compatibility whose only supported value is null."""
    prop.pop("anyOf", None)
    prop["type"] = "null"


def _spans(prop: dict[str, Any]) -> None:
    """At least one [start, end) pair of 0-based offsets (within the parent: not statable)."""
    for alt in _branches(prop):
        alt["minItems"] = 1
        for bound in alt["items"].get("prefixItems", []):
            bound["minimum"] = 0


def _generate_rules() -> list[dict[str, Any]]:
    """``GenerationConfig``' rules between fields that JSON Schema states in fixed clauses
    (absent = the default). The two that compare fields are descriptions (``GENERATE_NOTES``)."""
    return [
        {
            "not": {
                "properties": {"do_sample": {"const": True}, "num_beams": {"minimum": 2}},
                "required": ["do_sample", "num_beams"],
            }
        },  # no beam sampling
        {
            "if": {"properties": {"num_beams": {"const": 1}, "do_sample": {"const": False}}},
            "then": {"properties": {"num_return_sequences": {"const": 1}}},
        },  # greedy: one
    ]


# Rules that compare two fields, which JSON Schema cannot: a clause per value was valid JSON
# Schema but one the standard tools cannot generate from (``schemathesis run``: "Schema Error"),
# so they are stated here and enforced by ``GenerationConfig`` (a 422 naming the field).
GENERATE_NOTES = {
    "min_new_tokens": "Without max_new_tokens: at most its default. "
    "Over max_new_tokens: a 422 naming min_new_tokens.",
    "num_return_sequences": "With beam search at most num_beams; greedy: 1. "
    "Otherwise a 422 naming num_return_sequences.",
}


def _note(node: dict[str, Any], text: str) -> None:
    """Append ``text`` to a description once (``constrain`` of a constrained schema: no twice)."""
    desc = node.get("description", "")
    if text not in desc:
        node["description"] = f"{desc} {text}".strip()


def constrain(
    schema: dict[str, Any],
    limits: RequestLimits,
    facts: dict[str, Any] | None = None,
    models: list[str] | None = None,
) -> dict[str, Any]:
    """A copy of ``schema`` with the server's limits; ``models``: the served model ids (the
    ``model`` field's values). ``facts`` (``Ingress.schema_facts``):
    the default model's effective ``max_length``, served ``layers``, ``per_residue``,
    ``d_model``, residue ``letters`` and ``sentinels`` count; without them (offline) the
    config's limits and the standard Ankh vocabulary."""
    facts = facts or {}
    tok = AnkhTokenizer()
    letters = facts.get("letters", tok.residue_letters)
    sentinels = facts.get("sentinels", sum(t.startswith("<extra_id_") for t in tok.vocab))
    n = facts.get("max_length", limits.max_length)
    seqs = _strings(residue_pattern(letters, n), limits.max_sequences)
    one = _strings(residue_pattern(letters, n), None)
    unbounded = _strings(residue_pattern(letters, None), limits.max_sequences)
    props: dict[str, dict[str, Patch]] = {
        "EmbedRequest": {"sequences": seqs},
        "GenerateRequest": {
            "sequences": _strings(residue_pattern(letters, n, sentinels), limits.max_sequences),
            "max_new_tokens": _maximum(limits.max_new_tokens),
            "min_new_tokens": _maximum(limits.max_new_tokens),
            "num_beams": _maximum(limits.max_beams),
            "num_return_sequences": _maximum(limits.max_variants),
        },
        "VariantsRequest": {"parent": one, "n": _maximum(limits.max_variants), "spans": _spans},
        "ScoreRequest": {
            "sequences": seqs,
            "wild_type": one,
            "mutants": _strings(MUTANT, limits.max_sequences),
        },
        "EmbeddingsRequest": {"input": seqs},
        "TEIEmbedRequest": {"inputs": unbounded, "prompt_name": _null},
        "TEIEmbedAllRequest": {"inputs": unbounded, "prompt_name": _null},
    }
    props["SearchRequest"] = {"sequences": seqs, "k": _maximum(limits.max_k)}
    pn = min(facts.get("predict_max_length", n), limits.max_length)
    props["PredictRequest"] = {
        "sequences": _strings(residue_pattern(letters, pn), limits.max_sequences)
    }
    if facts.get("tasks"):
        props["PredictRequest"]["task"] = _enum([*facts["tasks"], ""])  # "": the first
    dims = set((facts.get("indexes") or {}).values())
    if facts.get("indexes"):
        props["SearchRequest"]["index"] = _enum([*facts["indexes"], ""])  # "": the first
    props["SearchRequest"]["vectors"] = _vectors(limits.max_sequences, dims)
    if "layers" in facts:
        props["EmbedRequest"]["layer"] = _enum(facts["layers"])
    if "d_model" in facts:
        for name in ("EmbeddingsRequest", "TEIEmbedRequest"):
            props[name]["dimensions"] = _enum([facts["d_model"]])
    out = copy.deepcopy(schema)
    comps = out.get("components", {}).get("schemas", {})
    for name, comp in comps.items():
        _json_bounds(list(comp.get("properties", {}).values()))
        if models and name in props and "model" in comp.get("properties", {}):
            props[name]["model"] = _enum(models + [""])  # "" (as null): the default model
    for name, patches in props.items():
        if name not in comps:
            continue
        for field, patch in patches.items():
            patch(comps[name]["properties"][field])
    _object_rules(comps, limits, facts, seqs)
    _error_responses(out)
    vr = comps.get("VariantsRequest")
    if vr and vr["properties"]["n"].get("default", 0) > limits.max_variants:
        vr.setdefault("required", []).append("n")  # the default itself is over the limit
    return out


def _object_rules(
    comps: dict[str, Any], limits: RequestLimits, facts: dict[str, Any], seqs: Patch
) -> None:
    """Rules between fields: generate's, score's "what to score", TEI's truncate."""
    if "GenerateRequest" in comps:
        comps["GenerateRequest"]["allOf"] = _generate_rules()
        for field, text in GENERATE_NOTES.items():
            _note(comps["GenerateRequest"]["properties"][field], text)
    if facts.get("per_residue") is False:
        comps["EmbedRequest"]["properties"]["pooling"]["enum"] = ["mean"]
    if "SearchRequest" in comps:  # exactly one of sequences / vectors
        comps["SearchRequest"]["oneOf"] = [{"required": ["sequences"]}, {"required": ["vectors"]}]
    if "ScoreRequest" in comps:
        present = {"not": {"type": "null"}}
        sc = comps["ScoreRequest"]
        sc["anyOf"] = [
            {"required": ["sequences"], "properties": {"sequences": present}},
            {"required": ["wild_type"], "properties": {"wild_type": present}},
        ]
        sc["allOf"] = [
            {
                "if": {"required": [a], "properties": {a: present}},
                "then": {"required": [b], "properties": {b: present}},
                "else": {"properties": {b: {"type": "null"}}},
            }
            for a, b in (("wild_type", "mutants"), ("mutants", "wild_type"))
        ]
        _note(
            sc,
            f"At most limits.max_score_residues={limits.max_score_residues} residues in "
            "`sequences` together.",
        )
    for name in ("TEIEmbedRequest", "TEIEmbedAllRequest"):
        if name in comps:  # over-long inputs are refused unless truncate is true
            bounded: dict[str, Any] = {
                "type": "object",
                "properties": {
                    "inputs": {
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}},
                        ]
                    }
                },
            }
            seqs(bounded["properties"]["inputs"])
            comps[name]["if"] = {
                "properties": {"truncate": {"const": True}},
                "required": ["truncate"],
            }
            comps[name]["else"] = bounded


ERRORS = {
    "401": "Missing or invalid bearer token (when auth is on).",
    "404": "Unknown model (the message lists the served ones).",
    "413": "Over a configured limit (the message names it).",
    "422": "Malformed input (the message names the field or sequence).",
    "429": "Over capacity (TEI-compatible routes; Retry-After).",
    "503": "Over capacity or a replica being replaced: retry after Retry-After.",
}


_MESSAGE = {"type": "string", "minLength": 1}  # every error names its problem
ERROR_BODIES: dict[str, dict[str, Any]] = {  # http.error_response and the compatible styles
    "Error": {
        "type": "object",
        "required": ["detail"],
        "properties": {
            "detail": {
                "description": "What is wrong: a message, or per field (request validation).",
                "anyOf": [
                    _MESSAGE,
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/components/schemas/ValidationError"},
                    },
                ],
            },
            "request_id": {"type": "string"},
        },
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {"message": _MESSAGE, "type": {"type": "string"}},
            },
            "request_id": {"type": "string"},
        },
    },
    "TEIError": {
        "type": "object",
        "required": ["error", "error_type"],
        "properties": {
            "error": _MESSAGE,
            "error_type": {"type": "string"},
            "request_id": {"type": "string"},
        },
    },
}


def _error_body(path: str) -> dict[str, Any]:
    name = "TEIError" if path in tei_api.PATHS else "Error"
    name = "OpenAIError" if path == openai_api.PATH else name
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _error_responses(schema: dict[str, Any]) -> None:
    """Every status a route can answer, documented with the error body it has (FastAPI lists
    only 200 and a 422 with its own body, which our error handlers replace)."""
    comps = schema.setdefault("components", {}).setdefault("schemas", {})
    comps.update(copy.deepcopy(ERROR_BODIES))
    comps.pop("HTTPValidationError", None)  # FastAPI's 422 body: ours replace it (http.py)
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            codes = {"401", "503"} | ({"404", "413", "422"} if "requestBody" in op else set())
            codes |= {"429"} if path in tei_api.PATHS else set()
            for code in sorted(codes):
                op["responses"][code] = {"description": ERRORS[code], "content": _error_body(path)}
