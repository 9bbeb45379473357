"""Ray Serve deployments against a real local Serve over real HTTP on a random loopback port.

One app for the module (tiny model exported to a real HF directory, bearer auth on):
embeddings equal the offline API, input normalisation, every kind of bad input -> 4xx naming
the problem (and the server keeps serving), auth, back-pressure 503 + Retry-After, seeded
generation, handles, OpenAPI. The same replicas also serve two more checkpoints chosen per
request (model multiplexing, at the end). What needs no running app (the shipped config
files, ``serve build``, the bucket plan, model names) is in ``test_serve_config.py``.
"""

from __future__ import annotations

import secrets
import threading

import numpy as np
import pytest

from tests.serve.helpers import SMALL, http, merge, proteins, serving, tiny_hf_dir

pytestmark = pytest.mark.timeout(900)
TOKEN = secrets.token_urlsafe(16)
RAY_WORKER_ENV = {"ANKH_SERVE_TOKEN": TOKEN}  # ray_local puts it in every replica's environment


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf_dir(tmp_path_factory, "tiny_hf", seed=3)


@pytest.fixture(scope="module")
def extra_models(tmp_path_factory):
    """Two more, different models served by the same replicas (model multiplexing): ``b``
    written by ``ankh.checkpoint.save_model``, ``c`` the ``tiny`` preset (seed 0); and
    ``broken``, a checkpoint path that does not exist."""
    import ankh
    from ankh.checkpoint import save_model

    path = tmp_path_factory.mktemp("mux")
    save_model(ankh.load("tiny", seed=4), str(path / "b_run"))
    return {"b": str(path / "b_run"), "c": "tiny", "broken": str(path / "missing")}


@pytest.fixture(scope="module")
def server(ray_local, hf_dir, extra_models):
    # One extra model resident per replica: asking for b then c evicts b (LRU).
    cfg = merge(
        SMALL,
        {
            "checkpoint": str(hf_dir),
            "auth": {"enabled": True},
            "embed": {"max_queued_requests": 2},
            "models": extra_models,
            "max_models_per_replica": 1,
        },
    )
    with serving(cfg) as url:
        yield url


@pytest.fixture(scope="module")
def offline(hf_dir):
    import ankh

    return ankh.load(str(hf_dir))


def post(url, path, body=None, **kw):
    return http("POST", f"{url}{path}", body, token=kw.pop("token", TOKEN), **kw)


def test_embeddings_over_http_equal_offline(server, offline):
    seqs = proteins(12, 120)  # varied lengths: both buckets, several rows, order must hold
    seqs = seqs[::2] + seqs[1::2]
    status, _, body = post(server, "/v1/embed", {"sequences": seqs})
    assert status == 200, body
    got = np.asarray(body["embeddings"], np.float32)
    want = offline.embed(seqs)
    assert got.shape == want.shape == (len(seqs), offline.config.d_model)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Per-residue: one [L_i, d] matrix per input, in order.
    status, _, body = post(server, "/v1/embed", {"sequences": seqs[:5], "pooling": "none"})
    assert status == 200, body
    want_res = offline.embed(seqs[:5], per_residue=True)
    for g, w, s in zip(body["embeddings"], want_res, seqs[:5]):
        assert np.asarray(g).shape == (len(s), offline.config.d_model)
        np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=1e-5, atol=1e-6)


def test_lowercase_and_whitespace_are_normalised(server):
    seq = proteins(1, 60, min_len=40)[0]
    messy = " " + "\n".join(seq[i : i + 10].lower() for i in range(0, len(seq), 10)) + "\t "
    status, _, body = post(server, "/v1/embed", {"sequences": [seq, messy]})
    assert status == 200, body
    np.testing.assert_allclose(body["embeddings"][0], body["embeddings"][1], rtol=1e-6, atol=1e-7)


BAD = [  # (body or raw bytes, expected status, words the message must contain)
    ({"sequences": []}, 422, ["sequences", "at least 1"]),
    ({"sequences": [""]}, 422, ["sequence 0", "empty"]),
    ({"sequences": ["MKT", "  \n"]}, 422, ["sequence 1", "empty"]),
    ({"sequences": ["MKTJ1"]}, 422, ["sequence 0", "'J'", "position 4"]),
    ({"sequences": ["M" * 100_000]}, 413, ["100000 residues", "limits.max_length=120"]),
    ({"sequences": ["MKT"] * 10_000}, 413, ["10000", "limits.max_sequences=16"]),
    ({"sequences": "MKTAYIAK"}, 422, ["sequences", "valid list"]),
    ({"sequences": [42]}, 422, ["sequences", "valid string"]),
    ({"sequences": ["MKT"], "pooling": "max"}, 422, ["pooling"]),
    ({"sequences": ["MKT"], "layer": 9}, 422, ["layer 9", "served layers"]),
    ({"sequences": ["MKT"], "batch": 4}, 422, ["batch", "Extra inputs are not permitted"]),
    ({"sequences": ["MKT"], "model": "nope"}, 404, ["unknown model 'nope'"]),
    (b"this is not json", 422, ["not valid JSON"]),
    (b'{"sequences": ["MKT"', 422, ["not valid JSON"]),
]


@pytest.mark.parametrize("body,code,words", BAD, ids=[f"embed{i}" for i in range(len(BAD))])
def test_bad_embed_input_is_4xx_naming_the_problem(server, body, code, words):
    raw = body if isinstance(body, bytes) else None
    status, _, got = post(server, "/v1/embed", None if raw else body, raw=raw)
    assert status == code, got
    assert all(w in str(got["detail"]) for w in words), got
    assert len(str(got)) < 2000  # the 10k/100k inputs are not echoed back


BAD_GEN = [
    (b'{"sequences": ["MKT"], "temperature": NaN}', 422, ["temperature"]),
    ({"sequences": ["MKT"], "top_k": -1}, 422, ["top_k", "greater than or equal to 0"]),
    ({"sequences": ["MKT"], "temperature": "hot"}, 422, ["temperature"]),
    ({"sequences": ["MKT"], "max_new_tokens": 5000}, 413, ["limits.max_new_tokens=32"]),
    ({"sequences": ["MKT"], "num_beams": 3, "do_sample": True}, 422, ["beam sampling"]),
    ({"sequences": ["MK<extra_id_0>T"], "seed": -1}, 422, ["seed"]),
    ({"sequences": ["MKT"], "top_p": 0}, 422, ["top_p"]),
    (
        {"sequences": ["MKT"], "max_new_tokens": 8, "min_new_tokens": 9},
        422,
        ["min_new_tokens", "0..max_new_tokens (8)"],
    ),
    ({"sequences": ["MKT"], "min_new_tokens": -1}, 422, ["min_new_tokens"]),
]


@pytest.mark.parametrize("body,code,words", BAD_GEN, ids=[f"gen{i}" for i in range(len(BAD_GEN))])
def test_bad_generate_input_is_4xx(server, body, code, words):
    raw = body if isinstance(body, bytes) else None
    status, _, got = post(server, "/v1/generate", None if raw else body, raw=raw)
    assert status == code, got
    assert all(w in str(got["detail"]) for w in words), got


def test_bad_score_input_is_4xx(server):
    status, _, got = post(server, "/v1/score", {"wild_type": "MKT"})
    assert status == 422 and "go together" in str(got["detail"])
    status, _, got = post(server, "/v1/score", {"sequences": ["M" * 100] * 3})
    assert status == 413 and "limits.max_score_residues=256" in got["detail"]


def test_server_still_serves_after_bad_inputs(server):
    status, _, body = post(server, "/v1/embed", {"sequences": ["MKTAYIAKQR"]})
    assert status == 200 and len(body["embeddings"]) == 1


def test_bearer_token_required_except_healthz(server):
    status, headers, body = post(server, "/v1/embed", {"sequences": ["MKT"]}, token=None)
    assert status == 401 and "bearer token" in body["detail"]
    assert headers.get("www-authenticate") == "Bearer"
    assert post(server, "/v1/embed", {"sequences": ["MKT"]}, token="wrong")[0] == 401
    assert http("GET", f"{server}/v1/models")[0] == 401
    status, headers, body = http("GET", f"{server}/healthz")
    assert status == 200 and body["status"] == "ok"
    assert headers.get("x-request-id")  # Serve's request id, also in the structured logs


def test_models_and_openapi(server, offline, hf_dir):
    status, _, body = http("GET", f"{server}/v1/models", token=TOKEN)
    assert status == 200, body
    m = body["data"][0]  # the default model first, then the multiplexed ones
    assert m["id"] == hf_dir.name and m["default"] and m["checkpoint"] == str(hf_dir)
    assert m["d_model"] == offline.config.d_model and m["length_buckets"] == [64, 128]
    assert m["limits"]["max_sequences"] == 16 and m["limits"]["max_length"] == 120
    status, _, schema = http("GET", f"{server}/openapi.json", token=TOKEN)
    assert status == 200
    assert {"/v1/embed", "/v1/generate", "/v1/score", "/healthz", "/v1/models"} <= set(
        schema["paths"]
    )
    req = schema["components"]["schemas"]["EmbedRequest"]
    assert req["additionalProperties"] is False and "sequences" in req["required"]


def test_generation_with_a_seed_is_reproducible(server):
    body = {
        "sequences": ["MKTAYIAK<extra_id_0>QISFVKSHFSRQ", "mkta yiak"],
        "do_sample": True,
        "temperature": 1.0,
        "top_k": 20,
        "max_new_tokens": 12,
        "seed": 7,
        "num_return_sequences": 2,
    }
    s1, _, a = post(server, "/v1/generate", body)
    s2, _, b = post(server, "/v1/generate", body)
    assert s1 == s2 == 200, (a, b)
    assert a["outputs"] == b["outputs"]
    assert len(a["outputs"]) == 2 and all(len(o) == 2 for o in a["outputs"])
    _, _, c = post(server, "/v1/generate", {**body, "seed": 8})
    assert c["outputs"] != a["outputs"]


def test_handles_give_the_same_operations(server):
    from ray import serve

    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"]
    emb = serve.get_deployment_handle("Embedder", app_name="ankh")
    got = emb.embed.remote(seqs).result()
    _, _, body = post(server, "/v1/embed", {"sequences": seqs})
    np.testing.assert_allclose(
        got, np.asarray(body["embeddings"], np.float32), rtol=1e-5, atol=1e-6
    )
    gen = serve.get_deployment_handle("Generator", app_name="ankh")
    kw = dict(do_sample=True, top_k=20, max_new_tokens=12, seed=7, num_return_sequences=2)
    out = gen.generate.remote(["MKTAYIAK<extra_id_0>QISFVKSHFSRQ"], **kw).result()
    _, _, body = post(
        server, "/v1/generate", {"sequences": ["MKTAYIAK<extra_id_0>QISFVKSHFSRQ"], **kw}
    )
    assert out == body["outputs"]


def test_min_new_tokens_as_offline(server, offline):
    # Near-uniform sampling: without min_new_tokens one of these rows ends early (</s> drawn at
    # its 22nd token); with it barred until 24, no row can. Served = offline, and it mattered.
    seqs = ["MKTAYIAK<extra_id_0>QISFVKSHFSRQ", "GSHM<extra_id_0>LEDPVDAFQ"]
    kw = dict(max_new_tokens=24, do_sample=True, temperature=50.0, num_return_sequences=8, seed=1)
    status, _, body = post(server, "/v1/generate", {"sequences": seqs, "min_new_tokens": 24, **kw})
    assert status == 200, body
    assert body["outputs"] == offline.generate(seqs, min_new_tokens=24, **kw)
    assert body["outputs"] != offline.generate(seqs, **kw)
    lengths = [len(r) for rows in offline.generate_ids(seqs, min_new_tokens=24, **kw) for r in rows]
    assert lengths == [24] * 16


def test_over_capacity_is_503_with_retry_after_never_a_hang(server):
    seqs = proteins(16, 120, min_len=100)
    barrier, results = threading.Barrier(24), []

    def client():
        barrier.wait()
        results.append(
            post(server, "/v1/embed", {"sequences": seqs, "pooling": "none"}, timeout=300)
        )

    threads = [threading.Thread(target=client) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    codes = sorted(r[0] for r in results)
    assert len(codes) == 24 and set(codes) <= {200, 503}, codes
    assert 503 in codes and 200 in codes, codes  # 8 in flight + 2 queued per caller, rest 503
    for status, headers, body in results:
        if status == 503:
            assert headers.get("retry-after") == "1" and "capacity" in body["detail"]
    assert post(server, "/v1/embed", {"sequences": ["MKT"]})[0] == 200


# ---- model multiplexing: several checkpoints per replica, chosen per request -----------------

MUX_HEADER = "serve_multiplexed_model_id"  # Serve's standard multiplexing header


@pytest.fixture(scope="module")
def offline_mux(offline, hf_dir, extra_models):
    import ankh

    return {hf_dir.name: offline, **{k: ankh.load(extra_models[k]) for k in ("b", "c")}}


def _loaded(deployment: str) -> list[str]:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name="ankh").loaded_models.remote().result()


def test_mux_models_lists_every_model(server, hf_dir):
    status, _, body = http("GET", f"{server}/v1/models", token=TOKEN)
    assert status == 200, body
    assert [m["id"] for m in body["data"]] == [hf_dir.name, "b", "c", "broken"]
    assert [m["default"] for m in body["data"]] == [True, False, False, False]
    assert body["data"][2]["checkpoint"] == "tiny" and body["max_models_per_replica"] == 1


def test_mux_each_model_answers_with_its_own_embeddings(server, offline_mux, hf_dir):
    a, seqs = hf_dir.name, proteins(6, 120)
    for name in ("b", "c", None):  # b, then c evicts b (one extra per replica); None: default
        body = {"sequences": seqs} | ({"model": name} if name else {})
        status, _, out = post(server, "/v1/embed", body)
        assert status == 200 and out["model"] == (name or a), out
        np.testing.assert_allclose(
            np.asarray(out["embeddings"], np.float32),
            offline_mux[name or a].embed(seqs),
            rtol=1e-5,
            atol=1e-5,
        )
    assert np.abs(offline_mux["b"].embed(seqs) - offline_mux[a].embed(seqs)).max() > 1e-2
    assert _loaded("Embedder") == [a, "c"]  # LRU: b went when c came; the default is pinned
    # Serve's own header picks the model too; per-residue output of an extra model.
    status, _, out = post(
        server, "/v1/embed", {"sequences": seqs[:2], "pooling": "none"}, headers={MUX_HEADER: "c"}
    )
    assert status == 200 and out["model"] == "c", out
    for got, want in zip(out["embeddings"], offline_mux["c"].embed(seqs[:2], per_residue=True)):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-5, atol=1e-5)
    status, _, body = http("GET", f"{server}/v1/models", token=TOKEN)
    assert [m["details"] for m in body["data"]] == [True, True, True, False]  # used so far


def test_mux_unknown_or_conflicting_model_is_4xx_and_server_keeps_serving(server, hf_dir):
    known = str([hf_dir.name, "b", "c", "broken"])
    for path in ("/v1/embed", "/v1/score", "/v1/generate"):
        status, _, got = post(server, path, {"sequences": ["MKT"], "model": "zz"})
        assert status == 404, got
        assert "unknown model 'zz'" in got["detail"] and known in got["detail"], got
    status, _, got = post(server, "/v1/embed", {"sequences": ["MKT"]}, headers={MUX_HEADER: "zz"})
    assert status == 404 and "unknown model 'zz'" in got["detail"], got
    status, _, got = post(
        server, "/v1/embed", {"sequences": ["MKT"], "model": "b"}, headers={MUX_HEADER: "c"}
    )
    assert status == 422 and "disagree" in got["detail"], got
    status, _, got = post(server, "/v1/embed", {"sequences": ["MKTAYIAKQR"]})
    assert status == 200 and got["model"] == hf_dir.name


def test_mux_handles_pick_the_model_with_multiplexed_model_id(server, offline_mux, hf_dir):
    from ray import serve

    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"]
    emb = serve.get_deployment_handle("Embedder", app_name="ankh")
    for name in ("c", hf_dir.name):  # the default's own name works too
        got = emb.options(multiplexed_model_id=name).embed.remote(seqs).result()
        np.testing.assert_allclose(got, offline_mux[name].embed(seqs), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="unknown model 'zz'"):
        emb.options(multiplexed_model_id="zz").embed.remote(seqs).result()


def test_mux_model_that_fails_to_load_is_a_500_naming_it(server, hf_dir):
    status, _, got = post(server, "/v1/embed", {"sequences": ["MKT"], "model": "broken"})
    assert status == 500 and "model 'broken'" in got["detail"], got
    assert "failed to load" in got["detail"] and "FileNotFoundError" in got["detail"], got
    status, _, got = post(server, "/v1/embed", {"sequences": ["MKTAYIAKQR"]})
    assert status == 200 and got["model"] == hf_dir.name  # the others keep serving
