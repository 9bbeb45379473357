"""What the batch-embedding tests compare the job with: the offline API, one sequence at a time."""

from __future__ import annotations

import numpy as np

from ankh_platform.embed.pack import combine_windows, windows


def offline_reference(model, seq: str, width: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled and per-residue embedding of ``seq`` alone through ``model.embed``; a sequence
    over ``width`` residues is embedded window by window and merged as the job documents."""
    n = len(seq)
    if n <= width:
        return model.embed([seq])[0], model.embed([seq], per_residue=True)[0]
    starts = windows(n, width, overlap)
    hidden = [model.embed([seq[s : s + width]], per_residue=True)[0] for s in starts]
    per_res = combine_windows(n, width, overlap, starts, hidden)
    return per_res.mean(0), per_res


def reader_batch(ids: list[str], seqs: list[str], path: str = "/in/shard-a.parquet") -> dict:
    """One input batch as the job's reader hands it to ``pack_udf`` (id, sequence, path, row)."""
    return {
        "id": np.array(ids, object),
        "sequence": np.array(seqs, object),
        "path": np.array([path] * len(ids), object),
        "row": np.arange(len(ids)),
    }
