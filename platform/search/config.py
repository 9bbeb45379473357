"""Settings of ``python -m jobs.index`` and ``python -m jobs.search``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ankh.batching import DEFAULT_BATCH_TOKENS


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    embeddings: str = ""  # a jobs.embed output directory (local or gs://)
    output: str = ""  # the index directory (local or gs://)
    input: str = ""  # FASTA/Parquet to embed first (with checkpoint); into <output>/_embeddings
    checkpoint: str = ""  # the model for ``input`` (ignored without it)
    metadata: str = ""  # Parquet file/dir/glob with ``id`` + columns kept beside the vectors
    columns: str = ""  # comma list of metadata columns ("" = every column but id/sequence)
    metric: Literal["cosine", "ip"] = "cosine"  # cosine: vectors normalized, inner product
    nlist: int = 0  # inverted lists of the coarse quantizer; 0 = ~4 sqrt(n), >= 39 points each
    pq_m: int = 0  # PQ sub-quantizers (bytes per vector at 8 bits); 0 = d/2 (a divisor of d)
    pq_bits: int = 0  # bits per PQ code; 0 = 8, fewer when the training sample is small
    train_size: int = 100_000  # vectors sampled (from every shard) to train the quantizers
    # The index's search defaults: 0 = the cheapest measured to reach ``target_recall`` after
    # the build (platform/search/calibrate.py); a set value is kept (its recall still measured).
    nprobe: int = 0  # lists visited per query
    refine: int = 0  # x max(k, 10) candidates re-ranked with the full vectors
    target_recall: float = 0.95  # recall@10 against exact search the defaults must reach
    seed: int = 0
    # parts encoded at once as Ray tasks; 0 = serial in this process; -1 = Ray (one task per
    # cluster CPU) where a cluster is addressed (RAY_ADDRESS) or Ray runs already, else serial
    workers: int = -1


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    index: str = ""  # an index directory written by jobs.index
    query: str = ""  # FASTA(.gz), or Parquet with id + sequence or id + embedding
    output: str = ""  # directory: hits.parquet, hits.tsv, summary.json
    k: int = 10  # neighbours per query
    nprobe: int = 0  # 0 = the index's default
    transfer: str = ""  # comma list of metadata columns to transfer (e.g. go_mf,go_bp,go_cc)
    batch_tokens: int = DEFAULT_BATCH_TOKENS  # token slots per model call when embedding
    shards: int = 0  # > 0: the index opened as this many Ray actors (groups of parts), fanned out


@dataclasses.dataclass(frozen=True)
class GoTransferConfig:
    """``jobs.evaluate --task go-transfer``: goPredSim on the shared uniprot_go splits."""

    checkpoint: str = ""  # the model that embeds lookup set and queries
    output: str = ""  # lookup embeddings, the index, hits, results.json / results.md
    data: str = ""  # uniprot_go Parquet (file/dir/glob); "" = the shared data's uniprot_go/
    lookup: int = 2000  # train-split proteins in the lookup set (labelled in some ontology)
    queries: int = 300  # test-split proteins scored
    max_length: int = 1000  # proteins longer than this are left out (CPU time)
    k: int = 1  # neighbours transferring terms (goPredSim: the nearest labelled one)
    ontologies: str = "go_mf,go_bp,go_cc"
    # beside the model: naive (term frequency), composition (aa + dipeptide vectors through the
    # same index), mmseqs (MMseqs2 easy-search best hit; needs mmseqs on PATH)
    baselines: str = "naive,composition"
    threads: int = 0  # mmseqs --threads (0 = its default: every core)
