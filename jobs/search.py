"""Search an index (``jobs.index``) for the nearest neighbours of query proteins.

    python -m jobs.search --index INDEX --query queries.fasta --k 10 --output hits/
    python -m jobs.search --index INDEX --query queries.parquet --output hits/ \\
        --transfer go_mf,go_bp,go_cc

Queries (FASTA(.gz), or Parquet with id + sequence, or id + embedding as jobs.embed writes it)
are embedded with the index's own model, pooling and layer. Writes ``hits.parquet``
(query_id, target_id, score, rank, lengths and the index's metadata columns), ``hits.tsv``
(BLAST/MMseqs2 tabular layout), ``summary.json``; with ``--transfer``, ``transfer.parquet``
(query_id, ontology, term, score: goPredSim annotation transfer). See docs/search.md.
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--index": _cli.flag("index", "an index directory written by jobs.index", required=True),
    "--query": _cli.flag(
        "query", "FASTA(.gz) or Parquet (id + sequence, or id + embedding)", required=True
    ),
    "--output": _cli.output_flag("output", "hits.parquet, hits.tsv, summary.json", required=True),
    "--k": _cli.flag("k", "neighbours per query (default 10)", type=int),
    "--nprobe": _cli.flag(
        "nprobe", "inverted lists visited per query (default: the index's)", type=int
    ),
    "--shards": _cli.flag(
        "shards", "open the index as N Ray actors (an index over one node's memory)", type=int
    ),
    "--transfer": _cli.flag(
        "transfer", "comma list of metadata columns to transfer, e.g. go_mf,go_bp,go_cc"
    ),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.search.config import SearchConfig
    from ankh_platform.search.query import run

    cfg, _ = _cli.parse(SearchConfig, argv, __doc__, "jobs.search", FLAGS)
    summary = run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "invalid"}, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
