"""Property-based fuzzing of the HTTP API from its own served OpenAPI schema (schemathesis).

One real Serve app (tiny model, small limits) on a loopback port. Every operation in the
served ``/openapi.json``: schema-invalid requests (negative mode) get a 4xx that names the
problem, never a 5xx; schema-valid ones (positive mode) are accepted (200) with a body that
conforms to the schema; afterwards the server is healthy and still equals the offline API.
The schema is the running config's: its limits are the ones below, not the defaults.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.serve.helpers import SMALL, http, merge, proteins, serving

schemathesis = pytest.importorskip("schemathesis")  # the test extra
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.timeout(900)
# Small limits so that generated requests stay cheap on a 2-core machine, and so that the
# schema visibly carries this config (not the defaults). 4 x 40 residues < max_score_residues:
# the one limit JSON Schema cannot state (a sum over sequences) cannot be reached.
LIMITS = {
    "max_sequences": 4,
    "max_length": 40,
    "max_new_tokens": 4,
    "max_variants": 2,
    "max_beams": 2,
    "max_score_residues": 256,
}
EXAMPLES = 25  # schema-invalid requests per operation (each answered in milliseconds)
VALID_EXAMPLES = 12  # schema-valid ones per operation (each runs the model)


@pytest.fixture(scope="module")
def server(ray_local):
    cfg = merge(SMALL, {"checkpoint": "tiny", "limits": LIMITS, "embed": {"length_buckets": [64]}})
    with serving(cfg) as url:
        assert http("GET", f"{url}/healthz")[0] == 200
        yield url


@pytest.fixture(scope="module")
def schema(server):
    return schemathesis.openapi.from_url(f"{server}/openapi.json")


def operations(schema, method: str | None = None):
    ops = [r.ok() for r in schema.get_all_operations()]
    return [op for op in ops if method is None or op.method.upper() == method]


def _detail(resp) -> str:
    """The error message of any of the three error styles (ours, OpenAI's, TEI's)."""
    body = resp.json()
    err = body.get("detail", body.get("error"))
    return str(err.get("message") if isinstance(err, dict) else err)


def _positive(case) -> bool:
    """Fields whose validity depends on another field's value (mutants naming the wild type's
    residues, spans within the parent) cannot be stated in JSON Schema: left out here."""
    body = case.body if isinstance(case.body, dict) else {}
    return body.get("mutants") is None and body.get("spans") is None


def fuzz(server, op, mode: GenerationMode, n: int, check) -> None:
    strategy = op.as_strategy(generation_mode=mode)
    if mode is GenerationMode.POSITIVE:
        strategy = strategy.filter(_positive)

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case):
        resp = case.call(base_url=server, timeout=120)
        check(case, resp)

    run()


def test_served_schema_states_the_running_limits(server):
    status, _, s = http("GET", f"{server}/openapi.json")
    assert status == 200
    comps = s["components"]["schemas"]
    seqs = comps["EmbedRequest"]["properties"]["sequences"]
    assert seqs["maxItems"] == 4 and seqs["minItems"] == 1
    pattern = seqs["items"]["pattern"]
    assert (
        "{1,40}" in pattern and re.fullmatch(pattern, " mk\nTA ") and not re.fullmatch(pattern, "")
    )
    assert not re.fullmatch(pattern, "MKJ") and not re.fullmatch(pattern, "M" * 41)
    gen = comps["GenerateRequest"]["properties"]
    assert gen["num_beams"]["maximum"] == 2 and gen["num_return_sequences"]["maximum"] == 2
    assert re.fullmatch(gen["sequences"]["items"]["pattern"], "MK<extra_id_0>T")
    top_p = gen["top_p"]["anyOf"]  # pydantic's gt=0 on a union restated as JSON Schema
    assert all(alt["exclusiveMinimum"] == 0 and alt["maximum"] == 1 for alt in top_p)
    assert "gt" not in gen["top_p"] and gen["max_new_tokens"]["anyOf"][0]["maximum"] == 4
    assert comps["EmbedRequest"]["properties"]["layer"]["anyOf"][0]["enum"]  # served layers
    assert "413" in s["paths"]["/v1/embed"]["post"]["responses"]


def test_offline_schema_follows_the_config():
    from ankh_platform.serve.http import openapi_schema
    from ankh_platform.serve.openapi import constrain
    from ankh_platform.serve.schema import RequestLimits

    s = constrain(openapi_schema(), RequestLimits(max_sequences=3, max_length=7, max_variants=5))
    props = s["components"]["schemas"]["VariantsRequest"]
    assert "{1,7}" in props["properties"]["parent"]["pattern"]
    assert "n" in props["required"]  # its default (10) is over max_variants=5
    seqs = s["components"]["schemas"]["EmbeddingsRequest"]["properties"]["input"]["anyOf"]
    assert [a.get("maxItems") for a in seqs] == [None, 3]


def test_invalid_requests_are_4xx_naming_the_problem(server, schema):
    def check(case, resp):
        assert 400 <= resp.status_code < 500, (case.body, resp.status_code, resp.text)
        assert _detail(resp).strip(), resp.text
        case.validate_response(resp, checks=[not_a_server_error, status_code_conformance])

    for op in operations(schema, "POST"):
        fuzz(server, op, GenerationMode.NEGATIVE, EXAMPLES, check)


def test_schema_valid_requests_are_accepted(server, schema):
    def check(case, resp):
        assert resp.status_code == 200, (case.path, case.body, resp.status_code, resp.text)
        case.validate_response(
            resp, checks=[not_a_server_error, status_code_conformance, response_schema_conformance]
        )

    for op in operations(schema):
        fuzz(server, op, GenerationMode.POSITIVE, VALID_EXAMPLES, check)


def test_healthy_and_equal_to_offline_after_fuzzing(server):
    import ankh

    assert http("GET", f"{server}/healthz")[0] == 200
    # What the fuzzer found, pinned: str.upper() must not make residues ('ß' -> 'SS'), a
    # non-UTF-8 body is a 422 naming it, 2.0 is the integer 2.
    status, _, body = http("POST", f"{server}/v1/embed", {"sequences": ["MKß"]})
    assert status == 422 and "'ß' at position 2" in body["detail"], body
    status, _, body = http("POST", f"{server}/v1/embed", raw=b'{"sequences": ["\xff"]}')
    assert status == 422 and "utf-8" in str(body["detail"]), body
    status, _, body = http(
        "POST", f"{server}/v1/generate", {"sequences": ["MKT"], "max_new_tokens": 2.0}
    )
    assert status == 200 and len(body["outputs"][0]) == 1, body
    seqs = proteins(4, 40)
    status, _, body = http("POST", f"{server}/v1/embed", {"sequences": seqs})
    assert status == 200, body
    want = ankh.load("tiny").embed(seqs)
    np.testing.assert_allclose(
        np.asarray(body["embeddings"], np.float32), want, rtol=1e-5, atol=1e-6
    )
