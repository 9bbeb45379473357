"""The variant-generation job records which model it ran: the reference as given, the pinned
one it loaded and a hub model's revision (commit), in ``summary.json`` and the Parquet metadata.

The hub is never reached: an offline ``huggingface_hub`` cache built as in tests/ankh/test_hub.py,
and the job runs in a fresh interpreter (``huggingface_hub`` reads its settings at import).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import ankh
from tests.ankh.test_hub import CFG, MAIN, OLD, REPO, ROOT, _offline_env, _snapshot


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf") / "hub"
    _snapshot(cache, REPO, MAIN, ankh.Ankh.random(CFG, seed=1), refs=("main",))
    _snapshot(cache, REPO, OLD, ankh.Ankh.random(CFG, seed=2), refs=("v0",))
    return cache


@pytest.mark.timeout(300)
def test_generate_job_records_model_and_revision(cache, tmp_path):
    code = (
        "import sys; from jobs import generate\n"
        "for ref, out in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    generate.main([f'model={ref}', 'sequence=MKTAYIAKQRQISFVKSHFSRQ', f'output={out}',"
        " 'n=2', 'temperatures=[1.0]', 'score_kind=none'])\n"
    )
    runs = {f"{REPO}": (MAIN, tmp_path / "main"), f"{REPO}@v0": (OLD, tmp_path / "v0")}
    argv = [x for ref, (_, out) in runs.items() for x in (ref, str(out))]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=_offline_env(cache),
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for ref, (commit, out) in runs.items():
        want = {"model": ref, "model_pinned": f"{REPO}@{commit}", "model_revision": commit}
        summary = json.loads((out / "summary.json").read_text())
        assert {k: summary[k] for k in want} == want
        assert [s["temperature"] for s in summary["per_temperature"]] == [1.0]
        meta = pq.read_schema(out / "variants.parquet").metadata
        assert {k: meta[f"ankh.{k}".encode()].decode() for k in want} == want


def test_local_model_records_reference_and_no_revision(tmp_path):
    from ankh_platform.generate.variants import GenerateJobConfig, run

    res = run(
        GenerateJobConfig(
            model="tiny",
            sequence="MKTAYIAKQRQ",
            output=str(tmp_path),
            n=1,
            temperatures=(1.0,),
            score_kind="none",
        )
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == res["model"] == "tiny" and summary["model_revision"] is None
    meta = pq.read_schema(tmp_path / "variants.parquet").metadata
    assert meta[b"ankh.model"] == b"tiny" and b"ankh.model_revision" not in meta
    # Every output published whole through ankh.storage: nothing else (no temporary) is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["variants.parquet", "variants.fasta", "summary.csv", "summary.json", "summary.png"]
    )


def test_job_sampling_settings_are_one_generation_config():
    from ankh.generation_config import GenerationConfig
    from ankh_platform.generate.variants import GenerateJobConfig

    cfg = GenerateJobConfig(sequence="MKT", output="x", top_k=5, top_p=0.9, seed=4)
    assert cfg.sampling() == GenerationConfig(do_sample=True, top_k=5, top_p=0.9, seed=4)
    with pytest.raises(ValueError, match="top_p must be in"):
        GenerateJobConfig(sequence="MKT", output="x", top_p=1.5)
