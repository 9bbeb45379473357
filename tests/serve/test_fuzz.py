"""Fuzzing the HTTP API with the standard tool's CLI, ``schemathesis run``, from its own served
``/openapi.json`` (``tests/serve/schemathesis.toml`` sets the statuses; its hooks file leaves out
the schema-valid requests that break a rule stated only in a description).

One real Serve app (tiny model, small limits) on a loopback port. Every operation in the
schema is exercised, none with a Schema Error: schema-invalid requests (negative mode) get a
4xx whose body names the problem, never a 5xx; schema-valid ones (positive mode) are served
(200) with a body that conforms to the schema (``--checks all``); afterwards the server is
healthy and still equals the offline API. The schema is the running config's: its limits are
the ones below, not the defaults.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.serve.helpers import REPO, SMALL, http, merge, proteins, serving

pytest.importorskip("schemathesis")  # the test extra (its CLI)

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
EXAMPLES = 20  # fuzzing-phase requests per operation; the coverage phase adds its own
CONFIG = REPO / "tests" / "serve" / "schemathesis.toml"
CLI_TIMEOUT = 600  # seconds: a hung server fails the test instead of stalling it


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory) -> str:
    """A fine-tuned run for /v1/predict: one step of an SS3 head on the tiny model."""
    from jobs import finetune

    out = str(tmp_path_factory.mktemp("ss3"))
    small = ["limits.train=8", "limits.valid=4", "limits.test=4", "limits.max_length=60"]
    finetune.main(
        ["--model", "tiny", "--task", "ss3", "--output", out, "mode=head", "steps=1"] + small
    )
    return out


@pytest.fixture(scope="module")
def server(tuned_run, ray_local, tmp_path_factory, protein_parquet):
    from tests.search.helpers import build_index

    index, _ = build_index(tmp_path_factory.mktemp("index"), protein_parquet, 40)  # /v1/search
    cfg = merge(SMALL, {"checkpoint": "tiny", "limits": LIMITS, "embed": {"length_buckets": [64]}})
    cfg |= {"indexes": {"uniprot": str(index)}, "search": {"num_cpus": 0.25}}
    cfg |= {"tasks": {"ss3": tuned_run}, "predict": {"num_cpus": 0.25}}  # /v1/predict
    with serving(cfg) as url:
        assert http("GET", f"{url}/healthz")[0] == 200
        yield url


def schemathesis_run(location: str, out: Path, *args: str) -> tuple[int, str, list[dict]]:
    """``schemathesis run`` (one worker, loopback): (exit code, its output, NDJSON events)."""
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    cmd = [exe or "schemathesis", "--config-file", str(CONFIG), "run", location]
    report = out / "events.ndjson"
    cmd += ["--workers", "1", "--no-color", "--generation-database", "none"]
    cmd += ["--request-timeout", "120", "--report", "ndjson", "--report-ndjson-path", str(report)]
    proc = subprocess.run(
        [*cmd, *args],
        cwd=REPO,  # the config's hooks path is relative to the repository root
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )
    events = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    return proc.returncode, proc.stdout + proc.stderr, events


def exercised(events: list[dict]) -> dict[str, Counter]:
    """Per operation ("POST /v1/embed"), the requests sent per generation mode."""
    sent: dict[str, Counter] = {}
    for event in events:
        done = event.get("ScenarioFinished")
        if done is None:
            continue
        rec = done["recorder"]
        modes = sent.setdefault(rec["label"], Counter())
        for case in rec.get("cases", {}).values():
            modes[case["value"]["meta"]["generation"]["mode"]] += 1
    return sent


def errors(events: list[dict]) -> list[str]:
    """What the CLI could not do: a Schema Error (it cannot generate from a part of the
    schema) is a NonFatalError event and an "error" scenario."""
    found = [str(e) for e in events if "NonFatalError" in e or "FatalError" in e]
    found += [
        f"{e['ScenarioFinished']['recorder']['label']}: {e['ScenarioFinished']['phase']}"
        for e in events
        if e.get("ScenarioFinished", {}).get("status") == "error"
    ]
    return found


def served_operations(url: str) -> set[str]:
    status, _, schema = http("GET", f"{url}/openapi.json")
    assert status == 200
    return {f"{m.upper()} {p}" for p, ops in schema["paths"].items() for m in ops}


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
    # Rules between two fields: described and enforced (a 422), no clause per value.
    assert len(comps["GenerateRequest"]["allOf"]) == 2
    assert "422 naming min_new_tokens" in gen["min_new_tokens"]["description"]
    assert "at most num_beams" in gen["num_return_sequences"]["description"]
    # Error responses carry the body they have (ours, not FastAPI's list-only 422).
    for path, name in (
        ("/v1/generate", "Error"),
        ("/embed", "TEIError"),
        ("/v1/embeddings", "OpenAIError"),
    ):
        body = s["paths"][path]["post"]["responses"]["422"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{name}"}, (path, body)


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


def test_schemathesis_run_passes_every_standard_check_on_every_operation(server, tmp_path):
    rc, output, events = schemathesis_run(
        f"{server}/openapi.json",
        tmp_path,
        "--checks=all",
        # ``all`` adds a 10 s response-time limit, a timing assertion (a first request compiles;
        # CI's cores are shared): raised to the request timeout, so only a hung request fails
        "--max-response-time=120",
        f"--max-examples={EXAMPLES}",
        "--phases=examples,coverage,fuzzing",
    )
    assert not errors(events), (errors(events), output[-6000:])
    assert rc == 0, output[-12000:]  # a failing check names the request (curl) and the seed
    sent = exercised(events)
    assert set(sent) == served_operations(server), (set(sent), output[-3000:])
    for op, modes in sent.items():
        assert modes["negative"] > 0, (op, modes)
        if op.startswith("POST"):  # a request body to generate: valid ones served too
            assert modes["positive"] > 0, (op, modes)
    assert "No issues found" in output, output[-3000:]


def test_schemathesis_generates_from_a_large_config_schema(server, tmp_path):
    """A clause per value of max_new_tokens (min_new_tokens <= it) was valid JSON Schema that
    the CLI could not generate from (a Schema Error) once the limits were the defaults; the
    served config here is too small to show it, so the schema of a large one, from a file."""
    from ankh_platform.serve.http import openapi_schema
    from ankh_platform.serve.openapi import constrain
    from ankh_platform.serve.schema import RequestLimits

    big = constrain(openapi_schema(), RequestLimits(max_new_tokens=4096, max_beams=64))
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(big))
    rc, output, events = schemathesis_run(
        str(path),
        tmp_path,
        f"--url={server}",
        "--include-path=/v1/generate",
        "--checks=not_a_server_error",  # past this server's limits: a 413, which is right here
        "--max-examples=5",
    )
    assert not errors(events), (errors(events), output[-6000:])
    assert rc == 0, output[-12000:]
    assert sum(exercised(events)["POST /v1/generate"].values()) > 0


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
