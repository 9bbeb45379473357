"""``jobs.predict`` on Ray Data (real local Ray, two predictor actors) over a Parquet and a
FASTA shard of real proteins with bad records: the same rows and predictions as the in-process
path, ids byte-exact, every bad record one rejected entry, and a resumed run redoes only the
rows a killed run had not finished (docs/finetuning.md#prediction)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ankh_platform.embed import inputs, outputs
from ankh_platform.finetune.predict_parts import PredictReplica, write_parts
from jobs import predict
from tests.serve.helpers import proteins

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
RAY = ["runner=ray", "replicas=2", "cpus_per_replica=0.5", "group_rows=3", "write_rows=2"]
# ids as users have them: spaces, non-ASCII, a UniProt header; kept byte for byte
IDS = ["sp|P12345|A_HUMAN desc", "protéine-1", " lead space", "x\ty"]
BAD = {"bad_letter": "MKT1AY", "empty": "", "null_seq": None}


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):  # trained before Ray starts (2 busy cores)
    from jobs import finetune

    out = tmp_path_factory.mktemp("go")
    args = ["limits.train=16", "limits.valid=4", "limits.test=4", "limits.max_length=100"]
    args += ["batch_size=4", "steps=1", "eval_every=1", "mode=head", "head=linear"]
    finetune.main(["--model", "tiny", "--task", "go_mf", "--output", str(out), *args])
    return str(out)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    seqs = proteins(8, 90)
    ids = [*IDS, *BAD]
    rows = [*seqs[: len(IDS)], *BAD.values()]
    order = [0, 4, 1, 5, 2, 6, 3]  # bad records between good ones
    table = pa.table({"id": [ids[i] for i in order], "sequence": [rows[i] for i in order]})
    pq.write_table(table, d / "a.parquet")
    fasta = seqs[len(IDS) :]
    (d / "b.fasta").write_text("".join(f">f{i} note\n{s}\n" for i, s in enumerate(fasta)))
    return d, table.to_pydict(), [f"f{i}" for i in range(len(fasta))]


def _read(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_ray_path_rows_rejections_and_resume(head_run, shards, ray_local, tmp_path):
    d, a, b_ids = shards
    here, on_ray = tmp_path / "here", tmp_path / "ray"
    ref = predict.main(
        ["--run", head_run, "--input", str(d), "--output", str(here), "runner=local"]
    )
    got = predict.main(["--run", head_run, "--input", str(d), "--output", str(on_ray), *RAY])
    assert not ref["ray"] and got["ray"] and got["replicas"] == 2
    good = [i for i, s in zip(a["id"], a["sequence"]) if i in IDS]
    rows_a = _read(on_ray / "a.parquet")
    assert [r["id"] for r in rows_a] == good  # input order, byte-exact
    assert [r["id"] for r in _read(on_ray / "b.parquet")] == b_ids
    rejected = {r["id"]: r for r in got["rejected"]}
    assert set(rejected) == set(BAD) and got["rejected_count"] == 3
    assert rejected["bad_letter"]["row"] == a["id"].index("bad_letter")
    assert "1" in rejected["bad_letter"]["reason"] and "empty" in rejected["empty"]["reason"]
    assert got["shards"] == {"a": {"rows": 4, "rejected": 3}, "b": {"rows": 4, "rejected": 0}}
    for stem in ("a", "b"):  # the Ray path predicts what one process predicts
        want, have = _read(here / f"{stem}.parquet"), _read(on_ray / f"{stem}.parquet")
        assert [r["prediction"] for r in have] == [r["prediction"] for r in want]
        np.testing.assert_allclose(
            [r["probabilities"] for r in have], [r["probabilities"] for r in want], atol=1e-6
        )

    # A killed run: "a" not merged, its rows 0-2 in a finished part; "b" done.
    before_b = (on_ray / "b.parquet").stat().st_mtime_ns
    (on_ray / "a.parquet").unlink()
    shard = inputs.InputShard(str(d / "a.parquet"), "a", "parquet")
    assert outputs.resume_rows(str(on_ray), shard, 7) == []  # records the input's facts
    first = next(inputs.read_batches({"path": [shard.path], "fmt": ["parquet"]}, chunk=3))
    write_parts(PredictReplica(head_run, 8)(first), str(on_ray))
    one = ["runner=ray", "cpus_per_replica=0.5"]  # one shard left: one replica will do
    again = predict.main(["--run", head_run, "--input", str(d), "--output", str(on_ray), *one])
    assert again["rows_resumed"] == 3 and again["rows_this_run"] == 4
    assert again["shards_written"] == 1 and again["shards_skipped_done"] == 1
    assert (on_ray / "b.parquet").stat().st_mtime_ns == before_b
    assert _read(on_ray / "a.parquet") == rows_a
    assert {r["id"] for r in again["rejected"]} == set(BAD)
    assert not (on_ray / outputs.PARTS).exists()
    summary = json.loads((on_ray / "_summary.json").read_text())
    assert summary["rows_resumed"] == 3


def test_other_run_into_the_same_output_is_refused(head_run, shards, tmp_path):
    (tmp_path / "_job.json").write_text(json.dumps({"run": "elsewhere"}))
    with pytest.raises(ValueError, match="other settings"):
        predict.main(["--run", head_run, "--input", str(shards[0]), "--output", str(tmp_path)])
