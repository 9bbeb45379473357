"""Build a nearest-neighbour index over embeddings (``jobs.embed`` output), or extend one.

    python -m jobs.index --embeddings EMB_DIR --output INDEX [--metadata proteins.parquet]
    python -m jobs.index --input proteins.fasta --model REF --output INDEX   # embeds first

INDEX (local or gs://) is a directory that opens without a server: IVF-PQ (FAISS) candidates
re-ranked with the full vectors, cosine similarity by default, ids and chosen metadata columns
beside the vectors, and a manifest naming the model, pooling, layer, dimension and metric. A
re-run resumes a killed build; a run over new shards adds them; vectors of another model,
pooling, layer or dimension are refused. See docs/search.md.
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--embeddings": _cli.flag("embeddings", "a jobs.embed output directory (local or gs://)"),
    "--output": _cli.output_flag("output", "the index directory (local or gs://)", required=True),
    "--input": _cli.flag(
        "input", "FASTA/Parquet to embed first with --model (into <output>/_embeddings)"
    ),
    "--model": _cli.model_flag("checkpoint", "only with --input: the model that embeds it"),
    "--metadata": _cli.flag(
        "metadata", "Parquet file/dir/glob with an id column: columns kept beside the vectors"
    ),
    "--columns": _cli.flag("columns", "comma list of metadata columns (default: all but sequence)"),
    "--metric": _cli.flag("metric", "cosine (default) or ip (inner product)"),
    "--target-recall": _cli.flag(
        "target_recall",
        "recall@10 vs exact search that the index's default nprobe/refine must reach, measured "
        "after the build on sampled vectors (default 0.95; 0 = keep nprobe/refine as set)",
        type=float,
    ),
    "--workers": _cli.flag(
        "workers",
        "parts encoded at once as Ray tasks; 0 = serial; default -1: Ray only on a cluster",
        type=int,
    ),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.search.build import run
    from ankh_platform.search.config import IndexConfig

    cfg, _ = _cli.parse(IndexConfig, argv, __doc__, "jobs.index", FLAGS)
    summary = run(cfg)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
