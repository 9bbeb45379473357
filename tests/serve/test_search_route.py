"""``POST /v1/search`` on a real Serve app (tiny model, an index of real proteins): equal to
the offline ``jobs.search``; hostile requests are 4xx naming the problem (docs/search.md)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ankh_platform.serve.schema import ServeConfig
from ankh_platform.serve.search import check_indexes
from tests.search.helpers import build_index
from tests.serve.helpers import SMALL, assert_refused, http, merge, serving

pytestmark = pytest.mark.timeout(900)
N = 80


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory, protein_parquet):
    index, prot = build_index(tmp_path_factory.mktemp("idx"), protein_parquet, N)
    cfg = merge(SMALL, {"checkpoint": "tiny", "indexes": {"uniprot": str(index)}})
    cfg["search"] = {"num_cpus": 0.25}
    with serving(cfg) as url:
        yield url, index, prot


def test_search_equals_offline_jobs_search(served, tmp_path):
    from ankh_platform.search.index import SearchIndex
    from ankh_platform.search.query import search_queries

    url, index, prot = served
    ids, seqs = prot["id"].to_pylist()[N - 2 :], prot["sequence"].to_pylist()[N - 2 :]
    status, _, body = http("POST", f"{url}/v1/search", {"sequences": seqs, "k": 5})
    assert status == 200, body
    assert body["index"] == "uniprot" and body["model"] == "tiny"
    hits, _ = search_queries(SearchIndex(str(index)), ids, seqs, None, 5)
    for q, got in zip(ids, body["results"]):
        rows = [r for r in hits.to_pylist() if r["query_id"] == q]
        assert [h["id"] for h in got] == [r["target_id"] for r in rows]
        np.testing.assert_allclose([h["score"] for h in got], [r["score"] for r in rows], atol=1e-4)
        assert [h["rank"] for h in got] == [1, 2, 3, 4, 5]
    # an indexed protein finds itself (or an identical sequence) first
    assert body["results"][0][0]["score"] == pytest.approx(1.0, abs=1e-4)
    # vectors in: the same neighbours as the index's own search
    ix = SearchIndex(str(index))
    vec = ix.vectors[:3].tolist()
    status, _, body = http("POST", f"{url}/v1/search", {"vectors": vec, "k": 3})
    assert status == 200, body
    assert [[h["id"] for h in r] for r in body["results"]] == [
        ix.rows(lab)["id"].to_pylist() for lab in ix.search(np.array(vec), 3)[1]
    ]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"vectors": [[0.5] * 63], "k": 3}, 422, "dimension 63; index 'uniprot' has 64"),
        ({"sequences": ["MKV"], "k": 0}, 422, "greater than or equal to 1"),
        ({"sequences": ["MKV"], "k": 101}, 413, "limits.max_k=100"),
        ({"sequences": ["MKV"], "index": "nope"}, 404, "unknown index 'nope'"),
        ({"sequences": ["MKV"], "vectors": [[0.0] * 64]}, 422, "exactly one"),
        ({"k": 3}, 422, "exactly one"),
        ({"sequences": ["MK1V"]}, 422, "sequence 0"),
        ({"vectors": [[1e300] * 64]}, 422, "less than or equal"),
    ],
)
def test_hostile_requests_are_4xx(served, body, status, words):
    assert_refused(served[0], "/v1/search", body, status, words)


def test_schema_states_search_limits(served):
    _, _, schema = http("GET", f"{served[0]}/openapi.json")
    req = schema["components"]["schemas"]["SearchRequest"]["properties"]
    assert req["k"]["maximum"] == 100
    assert req["vectors"]["items"]["minItems"] == req["vectors"]["items"]["maxItems"] == 64
    assert "uniprot" in req["index"]["anyOf"][0]["enum"]


def test_index_of_an_unserved_model_is_refused(served):
    cfg = ServeConfig(checkpoint="small", indexes={"uniprot": str(served[1])})
    with pytest.raises(ValueError, match="model 'tiny', which this deployment does not serve"):
        check_indexes(cfg)
    assert check_indexes(dataclasses.replace(cfg, checkpoint="tiny"))["uniprot"]["dim"] == 64
