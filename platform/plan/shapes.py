"""Which shapes Serve and the batch-embedding job run on a TPU host: the inference plan's inputs.

Numpy and configs only (no JAX): every shape comes from the project's one batching policy
(``ankh.batching``) applied to the Serve config's and the embed job's settings, exactly as the
replicas compile them (``ankh_platform.serve.embed.EmbedModel``: ``BatchPlan.shapes()``;
``ankh_platform.embed.replica``: ``pack_spec(...).shapes()``; ``Ankh.generate``:
``decode_ladder`` x ``sorted_batches``). Of the shapes a replica compiles, the plan compiles
the one that needs the most memory: the full batch of the longest row (the same token budget
as a shorter row's full batch, and attention's score blocks grow with the row length); a
decode step at the request limits' worst case (``max_sequences`` batched 32 a call, each with
``max_variants`` returned sequences, ``max_new_tokens`` decoded, the longest input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ankh.batching import (
    SERVE_MIN_LENGTH,
    BatchPlan,
    decode_ladder,
    padded_length,
    sequence_ladder,
)
from ankh.config import AnkhConfig

# Inputs decoded per call: ``Ankh.generate``'s default ``batch_size``, which Serve's generation
# deployment uses (``ankh_platform.serve.generate``).
GENERATE_BATCH = 32


@dataclasses.dataclass(frozen=True)
class EncoderShape:
    """One encoder call: ``rows x length`` token ids; ``max_segments`` > 0 for packed rows."""

    rows: int
    length: int
    per_residue: bool
    max_segments: int = 0
    compiled_shapes: int = 1  # how many shapes the replica compiles in all (this is the largest)

    @property
    def tokens(self) -> int:
        return self.rows * self.length


@dataclasses.dataclass(frozen=True)
class DecodeShape:
    """One generation step: ``inputs`` encoded inputs of ``enc_len`` tokens, ``returns`` rows
    decoded per input, a self-attention cache of ``max_len`` positions."""

    inputs: int
    returns: int
    enc_len: int
    max_len: int

    @property
    def rows(self) -> int:
        return self.inputs * self.returns


def largest(shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(rows, length)`` shapes that may need the most memory: the one with the most token
    slots (activations) and the one with the longest row (attention's per-row blocks; a full
    batch of the top rung can hold fewer tokens than the budget). One or two shapes."""
    if not shapes:
        raise ValueError("no shapes")
    most = max(shapes, key=lambda s: (s[0] * s[1], s[1]))
    longest = max(shapes, key=lambda s: (s[1], s[0]))
    return [most] if most == longest else [most, longest]


def serve_embed_shapes(model: AnkhConfig, serve: Any) -> list[EncoderShape]:
    """The Serve embedding replica's largest calls (``serve``: a ``ServeConfig``)."""
    opts = serve.embed
    ladder = list(opts.length_buckets) or sequence_ladder(model.max_length, SERVE_MIN_LENGTH)
    shapes = BatchPlan(ladder, opts.batch_tokens, opts.row_growth).shapes()
    variants = 2 if opts.per_residue else 1
    n = len(shapes) * variants * len({model.num_layers, *opts.layers})
    return [EncoderShape(r, n_len, opts.per_residue, 0, n) for r, n_len in largest(shapes)]


def embed_job_shapes(model: AnkhConfig, job: Any) -> list[EncoderShape]:
    """The batch-embedding replica's largest calls (``job``: an ``EmbedJobConfig``): packed
    rows of the job's doubling ladder, ``batch_tokens // length`` of them."""
    from ankh_platform.embed.job import pack_spec

    spec = pack_spec(job, model)
    shapes = spec.shapes()
    return [
        EncoderShape(r, n_len, job.per_residue, spec.max_segments, len(shapes))
        for r, n_len in largest(shapes)
    ]


def decode_shape(model: AnkhConfig, serve: Any) -> DecodeShape:
    """A generation step at the worst case Serve's request limits allow."""
    lim = serve.limits
    residues = min(lim.max_length, model.max_length)
    inputs = min(GENERATE_BATCH, lim.max_sequences)
    ladder = decode_ladder(model.max_length)  # as ``Ankh._decode_calls`` pads its inputs
    tokens = residues + 1 + int(model.task_prefixes)  # </s>; ankh3: [S2S] first
    enc_len = padded_length(min(tokens, ladder[-1]), ladder)
    return DecodeShape(inputs, lim.max_variants, enc_len, lim.max_new_tokens + 1)
