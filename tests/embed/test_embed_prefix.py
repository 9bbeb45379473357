"""The batch-embedding job on a model with task prefixes (ankh3): every piece (each window of a
long sequence too) starts with ``[NLU]``; pooled vectors and per-residue rows leave it out.

A small random ankh3-like model (task prefixes on, ankh3's tokenizer.json layout, so residue
ids differ from Ankh's) goes through the job's stages in-process (pack -> replica -> part
files -> merge) and must equal ``ankh.load(same).embed(...)``.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import ankh
from ankh_platform.embed import outputs
from ankh_platform.embed.job import EmbedJobConfig, _describe, pack_spec
from ankh_platform.embed.pack import EmbedPackSpec
from ankh_platform.embed.replica import EmbedReplica, pack_udf
from tests.embed.helpers import offline_reference, reader_batch

pytest.importorskip("tokenizers")
from tests.ankh.test_family import ANKH3_TINY, _ankh3_tokenizer_file

WIDTH, OVERLAP = 128, 32  # small, so some real proteins need windows
BAD = [("S2S", "[S2S]MKV"), ("J", "MKJV")]  # another task token; not an amino-acid letter


@pytest.fixture(scope="module")
def ankh3_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ankh3")
    ankh.Ankh.random(ANKH3_TINY, seed=7).save_hf(path)
    _ankh3_tokenizer_file(path / "tokenizer.json")
    return str(path)


def _reference(m, seq: str) -> tuple[np.ndarray, np.ndarray]:
    """Pooled and per-residue embedding of one sequence alone (windows: each alone, merged)."""
    return offline_reference(m, seq, WIDTH, OVERLAP)


def test_ankh3_job_stages_equal_offline_api(tmp_path, ankh3_dir, protein_parquet):
    pinned, mcfg, vocab = _describe(ankh3_dir)
    spec = pack_spec(
        EmbedJobConfig(
            checkpoint=pinned, max_length=WIDTH, batch_tokens=1024, window_overlap=OVERLAP
        ),
        mcfg,
    )
    assert spec.prefix == "[NLU]" and spec.row_lengths()[-1] >= WIDTH + 2
    t = pq.read_table(protein_parquet, columns=["id", "sequence"]).slice(0, 24).to_pydict()
    seqs = dict(zip(t["id"], t["sequence"]))
    assert sum(len(s) > WIDTH for s in seqs.values()) >= 3  # windows are exercised
    ids = t["id"] + [i for i, _ in BAD]
    batch = reader_batch(ids, t["sequence"] + [s for _, s in BAD])
    packed = pack_udf(batch, spec, vocab)
    nlu = vocab["[NLU]"]
    for row_ids, pieces in zip(packed["ids"], packed["pieces"]):
        for row, start, ntok, *_ in pieces.tolist():  # every piece (window) starts with [NLU]
            piece = row_ids[row, start : start + ntok]
            assert piece[0] == nlu and (piece[1:] != nlu).all()
    out = EmbedReplica(pinned, spec, per_residue=True, layer=0, compute_dtype="float32")(packed)
    outputs.write_parts(out, str(tmp_path))
    report = outputs.merge_shard(
        str(tmp_path), "shard-a", len(ids), "src", mcfg.d_model, WIDTH, OVERLAP
    )
    bad = {x["id"]: x["reason"] for x in report["invalid"]}
    assert bad.keys() == {"S2S", "J"} and "another task token" in bad["S2S"]
    got = pq.read_table(tmp_path / "shard-a.parquet").to_pydict()
    assert sorted(got["id"]) == sorted(t["id"])  # one row per valid id
    m = ankh.load(ankh3_dir)
    worst = 0.0
    for ident, emb, res, n in zip(got["id"], got["embedding"], got["per_residue"], got["length"]):
        pooled, per_res = _reference(m, seqs[ident])
        assert n == len(seqs[ident]) and np.asarray(res).shape == per_res.shape  # no [NLU] row
        worst = max(
            worst,
            float(np.abs(np.asarray(emb) - pooled).max()),
            float(np.abs(np.asarray(res) - per_res).max()),
        )
    assert worst < 1e-5


def test_replica_refuses_pieces_packed_for_another_model(ankh3_dir):
    with pytest.raises(ValueError, match="task prefix None"):
        EmbedReplica(
            ankh3_dir,
            EmbedPackSpec(max_length=WIDTH, window_overlap=OVERLAP),
            per_residue=False,
            layer=0,
            compute_dtype="float32",
        )
