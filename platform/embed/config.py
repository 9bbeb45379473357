"""The batch-embedding job's settings (``python -m jobs.embed``; ``ankh_platform.embed.job``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ankh.batching import DEFAULT_BATCH_TOKENS


@dataclasses.dataclass(frozen=True)
class EmbedJobConfig:
    checkpoint: str = ""  # preset name (random weights; tests), HF Ankh dir, or our run dir
    input: str = ""  # file, directory, glob or comma list; Parquet (id, sequence) or FASTA[.gz]
    output: str = ""  # directory (local or gs://) for <shard>.parquet + _summary.json
    input_format: Literal["auto", "parquet", "fasta"] = "auto"
    per_residue: bool = False  # also write per-residue embeddings [length, d_model]
    out_dtype: Literal["float32", "float16"] = "float32"
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU/TPU
    layer: int = 0  # encoder layer to read (1-based); 0 = final output
    batch_tokens: int = DEFAULT_BATCH_TOKENS  # token slots per model call
    min_row_tokens: int = 128  # shortest row of the doubling ladder
    # Row lengths per doubling: 1 (128, 256, 512, ...: least padding) or 2 (128, 192, 256, 384,
    # ...: proteins share shorter rows, so less attention across proteins, for more padding and
    # 7 compiles not 4; `python -m jobs.benchmark fasta row_steps_per_octave=2` measures it)
    row_steps_per_octave: int = 1
    max_segments: int = 64  # sequences packed in one row at most
    group_rows: int = 4096  # sequences sorted and packed together (bigger: less padding)
    max_length: int = 0  # residues per model call; 0 = the checkpoint's max_length
    long_policy: Literal["window", "truncate", "skip"] = "window"
    window_overlap: int = 128  # residues shared by consecutive windows (long_policy=window)
    strip_stop: bool = True  # drop one trailing '*' before validation
    replicas: int = 1  # model replicas (actor pool size)
    gpus_per_replica: float = -1  # -1: 1 if the cluster has GPUs, else 0
    cpus_per_replica: float = 1
    replica_niceness: int = 0  # CPU priority of the model replicas (Ray's workers default: 15)
    write_rows: int = 2048  # rows per part file (at most; per shard)
    block_bytes: int = 1 << 20  # Ray Data block size target: small, so batches stream one by one
    hdf5: str = ""  # also write one HDF5 file (local or gs://): dataset <id> = pooled [d_model]
    hdf5_per_residue: str = ""  # ... and/or one with dataset <id> = [length, d_model]
