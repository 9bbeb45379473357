"""The clients people have, against one real local Serve app over real HTTP: the ``openai``
SDK on the OpenAI-compatible ``/v1/embeddings`` and ``/v1/models``, ``huggingface_hub``'s
``InferenceClient`` on the TEI-compatible routes (``/``, ``/embed``, ``/embed_all``, ``/info``),
TEI's status codes (413, 422, 429 when overloaded), and the binary per-residue forms of our own
``/v1/embed`` (base64 float16/float32, ``application/x-npy``). Every answer is compared with
the offline API (``ankh.load(same dir).embed``) at the Serve tests' tolerance.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import threading
import urllib.request

import numpy as np
import pytest

from tests.serve.helpers import SMALL, http, merge, proteins, serving, tiny_hf_dir

pytestmark = pytest.mark.timeout(900)
TOKEN = secrets.token_urlsafe(16)
RAY_WORKER_ENV = {"ANKH_SERVE_TOKEN": TOKEN}  # ray_local puts it in every replica's environment
TOL = {"rtol": 1e-5, "atol": 1e-6}  # tests/serve/test_serve.py's: float32 batch-shape rounding


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf_dir(tmp_path_factory, "tiny_clients", seed=5)


@pytest.fixture(scope="module")
def server(ray_local, hf_dir):
    # Embedder: 2 requests in flight + 1 queued; a burst past that is back-pressure.
    cfg = merge(
        SMALL,
        {
            "checkpoint": str(hf_dir),
            "auth": {"enabled": True},
            "generate": {"enabled": False},
            "embed": {"max_ongoing_requests": 2, "max_queued_requests": 1},
        },
    )
    with serving(cfg) as url:
        yield url


@pytest.fixture(scope="module")
def offline(hf_dir):
    import ankh

    return ankh.load(str(hf_dir))


@pytest.fixture(scope="module")
def seqs():
    out = proteins(6, 110)
    return out[::2] + out[1::2]  # varied lengths, not sorted


def post(url, path, body, **kw):
    return http("POST", f"{url}{path}", body, token=kw.pop("token", TOKEN), **kw)


def unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


# ---- OpenAI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(server):
    import openai

    return openai.OpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0)


def test_openai_sdk_embeddings_equal_offline(oai, offline, seqs, hf_dir):
    want = offline.embed(seqs)
    res = oai.embeddings.create(model=hf_dir.name, input=seqs)  # the SDK asks for base64
    assert [d.index for d in res.data] == list(range(len(seqs))) and res.model == hf_dir.name
    np.testing.assert_allclose(np.asarray([d.embedding for d in res.data]), want, **TOL)
    assert res.usage.prompt_tokens == res.usage.total_tokens == sum(map(len, seqs))
    res = oai.embeddings.create(model=hf_dir.name, input=seqs, encoding_format="float")
    np.testing.assert_allclose(np.asarray([d.embedding for d in res.data]), want, **TOL)
    one = oai.embeddings.create(
        model=hf_dir.name, input=seqs[0].lower(), dimensions=offline.config.d_model
    )  # its own width is fine
    assert len(one.data) == 1
    np.testing.assert_allclose(one.data[0].embedding, want[0], **TOL)


def test_openai_base64_is_little_endian_float32(server, offline, seqs):
    status, _, body = post(
        server, "/v1/embeddings", {"input": seqs[:2], "encoding_format": "base64"}
    )
    assert status == 200, body
    got = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]]
    np.testing.assert_allclose(np.stack(got), offline.embed(seqs[:2]), **TOL)


def test_openai_models_list_keeps_our_fields(oai, server, offline, hf_dir):
    ids = [m.id for m in oai.models.list()]
    assert ids == [hf_dir.name]
    status, _, body = http("GET", f"{server}/v1/models", token=TOKEN)
    assert status == 200 and body["object"] == "list"
    m = body["data"][0]
    assert m["object"] == "model" and m["owned_by"] == "ankh" and isinstance(m["created"], int)
    assert m["d_model"] == offline.config.d_model and m["limits"]["max_sequences"] == 16


def test_openai_errors_are_clear(oai, offline):
    import openai

    with pytest.raises(openai.UnprocessableEntityError, match="dimensions=8 is not supported"):
        oai.embeddings.create(model="", input=["MKT"], dimensions=8)
    with pytest.raises(openai.NotFoundError, match="unknown model 'nope'"):
        oai.embeddings.create(model="nope", input=["MKT"])
    with pytest.raises(openai.UnprocessableEntityError, match="sequence 1.*'J'"):
        oai.embeddings.create(model="", input=["MKT", "MKJ"])
    with pytest.raises(openai.UnprocessableEntityError, match="input"):
        oai.embeddings.create(model="", input=[[1, 2, 3]])  # token ids: not a protein
    with pytest.raises(openai.APIStatusError, match="limits.max_sequences=16") as e:
        oai.embeddings.create(model="", input=["MKT"] * 17)
    assert e.value.status_code == 413
    bad = openai.OpenAI(base_url=oai.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.embeddings.create(model="", input=["MKT"])


# ---- TEI ------------------------------------------------------------------------------------


def test_inference_client_feature_extraction(server, offline, seqs):
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=server, api_key=TOKEN)
    want = offline.embed(seqs)
    got = client.feature_extraction(seqs)  # TEI default: normalize=true
    np.testing.assert_allclose(got, unit(want), **TOL)
    np.testing.assert_allclose(client.feature_extraction(seqs, normalize=False), want, **TOL)
    one = client.feature_extraction(seqs[0])
    assert one.shape == (1, offline.config.d_model)
    status, _, body = post(server, "/embed", {"inputs": seqs, "normalize": False})
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body, np.float32), want, **TOL)


def test_tei_embed_all_and_info(server, offline, seqs, hf_dir):
    status, _, body = post(server, "/embed_all", {"inputs": seqs[:3]})
    assert status == 200, body
    for got, want, s in zip(body, offline.embed(seqs[:3], per_residue=True), seqs):
        assert np.asarray(got).shape == (len(s), offline.config.d_model)
        np.testing.assert_allclose(np.asarray(got, np.float32), want, **TOL)
    status, _, info = http("GET", f"{server}/info", token=TOKEN)
    assert status == 200, info
    assert info["model_id"] == hf_dir.name and info["model_type"] == {
        "embedding": {"pooling": "mean"}
    }
    assert info["max_input_length"] == 120 and info["max_client_batch_size"] == 16
    assert info["dim"] == offline.config.d_model and info["model_dtype"] == "float32"


def test_tei_truncate_cuts_instead_of_refusing(server, offline):
    long = proteins(1, 400, min_len=150)[0]
    status, _, body = post(server, "/embed", {"inputs": long, "normalize": False})
    assert status == 413 and body["error_type"] == "validation", body
    assert "limits.max_length=120" in body["error"]
    for direction, part in (("right", long[:120]), ("left", long[-120:])):
        status, _, body = post(
            server,
            "/embed",
            {
                "inputs": [long],
                "truncate": True,
                "normalize": False,
                "truncation_direction": direction,
            },
        )
        assert status == 200, body
        np.testing.assert_allclose(np.asarray(body, np.float32), offline.embed([part]), **TOL)


TEI_BAD = [  # (body or raw bytes, status, words in "error")
    ({"inputs": ["MKT"] * 17}, 413, ["limits.max_sequences=16"]),
    ({"inputs": ["MKT", "MKJ"]}, 422, ["sequence 1", "'J'"]),
    ({"inputs": []}, 422, ["inputs"]),
    ({"inputs": [3]}, 422, ["inputs"]),
    ({"inputs": "MKT", "prompt_name": "query"}, 422, ["prompt_name", "no prompts"]),
    ({"inputs": "MKT", "dimensions": 8}, 422, ["dimensions=8"]),
    ({"inputs": "MKT", "pooling": "cls"}, 422, ["pooling", "Extra inputs"]),
    (b'{"inputs": ["MKT"', 422, ["not valid JSON"]),
]


@pytest.mark.parametrize("body,code,words", TEI_BAD, ids=[f"tei{i}" for i in range(len(TEI_BAD))])
def test_tei_bad_input_has_tei_status_and_body(server, body, code, words):
    raw = body if isinstance(body, bytes) else None
    status, _, got = post(server, "/embed", None if raw else body, raw=raw)
    assert status == code, got
    assert set(got) == {"error", "error_type", "request_id"}, got
    assert all(w in got["error"] for w in words), got


def test_tei_overloaded_is_429_ours_stays_503(server):
    """A burst past the Embedder's 2 in flight + 1 queued: TEI says 429, /v1/embed 503; both
    with Retry-After, never a hang, and the server serves afterwards."""
    batch = proteins(16, 120, min_len=100)

    def burst(path: str, body: dict) -> list[tuple[int, dict, object]]:
        barrier, results = threading.Barrier(10), []

        def client():
            barrier.wait()
            results.append(post(server, path, body, timeout=300))

        threads = [threading.Thread(target=client) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert len(results) == 10
        return results

    for path, body, busy in (
        ("/embed_all", {"inputs": batch}, 429),
        ("/v1/embed", {"sequences": batch, "pooling": "none"}, 503),
    ):
        results = burst(path, body)
        codes = sorted(r[0] for r in results)
        assert set(codes) <= {200, busy} and 200 in codes and busy in codes, (path, codes)
        for status, headers, got in results:
            if status == busy:
                assert headers.get("retry-after") == "1", headers
                text = got["error"] if busy == 429 else got["detail"]
                assert "capacity" in text, got
        if busy == 429:
            assert all(r[2]["error_type"] == "overloaded" for r in results if r[0] == 429)
    assert post(server, "/embed", {"inputs": "MKT"})[0] == 200


# ---- binary per-residue on /v1/embed ------------------------------------------------------------


def raw_post(url: str, body: dict, accept: str) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(f"{url}/v1/embed", json.dumps(body).encode(), method="POST")
    for k, v in {
        "content-type": "application/json",
        "accept": accept,
        "authorization": f"Bearer {TOKEN}",
    }.items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()


def test_binary_per_residue_base64_and_npy(server, offline, seqs):
    d = offline.config.d_model
    want = offline.embed(seqs[:4], per_residue=True)
    for dtype, tol in (("float32", TOL), ("float16", {"rtol": 1e-3, "atol": 1e-3})):
        status, _, body = post(
            server,
            "/v1/embed",
            {"sequences": seqs[:4], "pooling": "none", "encoding_format": "base64", "dtype": dtype},
        )
        assert status == 200 and body["encoding_format"] == "base64", body
        for b64, w in zip(body["embeddings"], want):
            got = np.frombuffer(base64.b64decode(b64), np.dtype(dtype).newbyteorder("<"))
            assert got.size == w.size  # [length * dim], row-major
            np.testing.assert_allclose(got.reshape(-1, d).astype(np.float32), w, **tol)
    status, headers, data = raw_post(
        server, {"sequences": seqs[:4], "pooling": "none"}, "application/x-npy"
    )
    assert status == 200 and headers["content-type"] == "application/x-npy"
    lengths = [int(x) for x in headers["x-embedding-lengths"].split(",")]
    assert lengths == [len(s) for s in seqs[:4]]
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    assert arr.shape == (sum(lengths), d) and arr.dtype == np.float32
    for got, w in zip(np.split(arr, np.cumsum(lengths)[:-1]), want):
        np.testing.assert_allclose(got, w, **TOL)
    _, headers, data = raw_post(server, {"sequences": seqs}, "application/x-npy")  # pooled
    np.testing.assert_allclose(np.load(io.BytesIO(data)), offline.embed(seqs), **TOL)
    assert headers["x-embedding-lengths"] == ",".join(["1"] * len(seqs))
