"""``POST /v1/predict`` on a real Serve app serving two fine-tuned runs of the tiny model (SS3
per residue with LoRA, GO-MF per protein with a head): equal to the offline ``jobs.predict`` on
real proteins; hostile requests are 4xx naming the problem (docs/finetuning.md)."""

from __future__ import annotations

import concurrent.futures as cf

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.serve.helpers import SMALL, assert_refused, http, merge, proteins, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # two fine-tuning runs first
TUNE = ["limits.train=24", "limits.valid=8", "limits.test=8", "limits.max_length=120"]
TUNE += ["batch_size=4", "steps=2", "eval_every=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from jobs import finetune

    root = tmp_path_factory.mktemp("runs")
    out = {"ss3": root / "ss3", "go": root / "go"}
    finetune.main(["--model", "tiny", "--task", "ss3", "--output", str(out["ss3"]), *TUNE])
    go = ["--task", "go_mf", "--output", str(out["go"]), "mode=head"]
    finetune.main(["--model", "tiny", *go, *TUNE])
    return {k: str(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def served(runs, ray_local):  # trained before Ray starts (2 busy cores)
    cfg = merge(
        SMALL,
        {
            "checkpoint": "tiny",
            "generate": {"enabled": False},
            "tasks": runs,  # ss3 first: the default task
            "predict": {"num_cpus": 0.5, "batch_size": 4},
            "max_tasks_per_replica": 1,
        },
    )
    with serving(cfg) as url:
        yield url


def _offline(run: str, seqs: list[str], tmp_path) -> list[dict]:
    from jobs import predict

    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "pred"
    predict.main(["--run", run, "--input", str(fasta), "--output", str(out), "batch_size=4"])
    return pq.read_table(out / "in.parquet").to_pylist()


@pytest.mark.parametrize("task", ["ss3", "go"])
def test_predict_equals_offline_jobs_predict(served, runs, task, tmp_path):
    seqs = proteins(6, 110)
    want = _offline(runs[task], seqs, tmp_path)
    # Two concurrent requests (gathered by @serve.batch), lower case and whitespace normalised.
    halves = [seqs[:3], [s.lower() if i else f" {s[:5]}\n{s[5:]}" for i, s in enumerate(seqs[3:])]]
    with cf.ThreadPoolExecutor(2) as pool:
        replies = list(
            pool.map(
                lambda part: http(
                    "POST", f"{served}/v1/predict", {"sequences": part, "task": task}
                ),
                halves,
            )
        )
    got = []
    for status, _, body in replies:
        assert status == 200, body
        assert body["task"] == task
        got += body["predictions"]
    kind = {"ss3": "residue_class", "go": "multilabel"}[task]
    assert body["kind"] == kind and len(got) == len(want) == len(seqs)
    for g, w, s in zip(got, want, seqs):
        assert g["prediction"] == w["prediction"]
        np.testing.assert_allclose(g["probabilities"], w["probabilities"], atol=1e-5)
        if kind == "residue_class":
            assert len(g["prediction"]) == len(s) and set(g["prediction"]) <= set("HEC")
        else:
            assert np.asarray(g["probabilities"]).shape == (len(body["classes"]),)


def test_default_task_is_the_first(served):
    status, _, body = http("POST", f"{served}/v1/predict", {"sequences": ["MKTAYIAKQR"]})
    assert status == 200 and body["task"] == "ss3" and body["classes"] == list("HEC"), body
    assert len(body["predictions"][0]["prediction"]) == 10


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"sequences": ["MKV"], "task": "nope"}, 404, "unknown task 'nope'"),
        ({"sequences": [""], "task": "go"}, 422, "sequence 0 is empty"),
        ({"sequences": ["MKV", "MK1V"]}, 422, "sequence 1"),
        ({"sequences": ["MKß"]}, 422, "'ß' at position 2"),
        ({"sequences": ["M" * 121]}, 413, "limits.max_length=120"),
        ({"sequences": ["MKV"] * 17}, 413, "limits.max_sequences=16"),
        ({"sequences": []}, 422, "at least 1"),
        ({"sequences": "MKV"}, 422, "list"),
        ({"sequences": ["MKV"], "pooling": "mean"}, 422, "pooling"),
        ({"sequences": [7]}, 422, "string"),
    ],
)
def test_hostile_requests_are_4xx(served, body, status, words):
    assert_refused(served, "/v1/predict", body, status, words)


def test_schema_and_models_state_the_tasks_and_limits(served):
    _, _, schema = http("GET", f"{served}/openapi.json")
    req = schema["components"]["schemas"]["PredictRequest"]["properties"]
    assert req["sequences"]["maxItems"] == 16 and "{1,120}" in req["sequences"]["items"]["pattern"]
    assert req["task"]["anyOf"][0]["enum"] == ["ss3", "go", ""]
    responses = schema["paths"]["/v1/predict"]["post"]["responses"]
    assert {"404", "413", "422"} <= set(responses)
    _, _, models = http("GET", f"{served}/v1/models")
    assert [(t["id"], t["kind"]) for t in models["tasks"]] == [
        ("ss3", "residue_class"),
        ("go", "multilabel"),
    ]


def test_a_run_that_is_not_a_run_is_refused(tmp_path):
    from ankh_platform.serve.predict import check_tasks
    from ankh_platform.serve.schema import ServeConfig

    with pytest.raises(ValueError, match="task 'x': .* is not a jobs.finetune run"):
        check_tasks(ServeConfig(tasks={"x": str(tmp_path)}))
    with pytest.raises(ValueError, match="tasks: name"):
        ServeConfig(tasks={"bad name": str(tmp_path)})
