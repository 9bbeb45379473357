"""Serving config (typed dataclasses, ``configlib``) and the HTTP API's pydantic models.

Request models forbid unknown fields, use strict types (a number is not a sequence) and reject
NaN/inf, so a malformed request is a 422 naming the field. Limits that depend on the served
model or the deployment config (how many sequences, how long, how many new tokens) are checked
by :func:`check_limits` and give a 413 naming the limit.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictFloat,
    StrictStr,
    model_validator,
)

from ankh.batching import DEFAULT_BATCH_TOKENS
from ankh.generation_config import GenerationConfig
from ankh.tokenizer import SENTINEL_RE

# ---- deployment config (YAML / CLI overrides via configlib) ---------------------------------

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")  # safe in a header and a log


@dataclass(frozen=True)
class DeploymentOptions:
    """Ray Serve options of one deployment (all settable from YAML or ``a.b=value``)."""

    num_replicas: int = 1
    # Serve autoscaling_config (e.g. {min_replicas: 1, max_replicas: 4,
    # target_ongoing_requests: 16}); when set it replaces num_replicas.
    autoscaling: dict | None = None
    max_ongoing_requests: int = 64  # in flight per replica
    max_queued_requests: int = 128  # waiting per caller; past this: 503 + Retry-After
    num_cpus: float = 1.0


@dataclass(frozen=True)
class EmbedOptions(DeploymentOptions):
    # Padded lengths (tokens incl. </s>) compiled at replica start; () = 64, 96, 128, ... up
    # to the model's max_length + 1 (``ankh.batching.sequence_ladder`` from SERVE_MIN_LENGTH).
    length_buckets: tuple[int, ...] = ()
    batch_tokens: int = DEFAULT_BATCH_TOKENS  # rows per batch = batch_tokens // bucket length
    row_growth: int = 2  # compiled batch rows: 1, g, g^2, ... and the full batch
    max_batch_size: int = 256  # sequences gathered by @serve.batch per step
    batch_wait_timeout_s: float = 0.005
    layers: tuple[int, ...] = ()  # earlier encoder layers served too (final always served)
    per_residue: bool = True  # compile the per-residue variant as well


@dataclass(frozen=True)
class GenerateOptions(DeploymentOptions):
    enabled: bool = True
    warmup: bool = True  # compile greedy decoding at replica start
    max_ongoing_requests: int = 8
    max_queued_requests: int = 32


@dataclass(frozen=True)
class PredictOptions(DeploymentOptions):  # /v1/predict's deployment (serve/predict.py)
    batch_size: int = 8  # rows per forward pass (the run's padded batches, like jobs.predict)
    max_batch_size: int = 64  # sequences gathered by @serve.batch per step
    batch_wait_timeout_s: float = 0.005
    warmup: bool = True  # compile every length rung up to the served maximum at task load


@dataclass(frozen=True)
class IngressOptions(DeploymentOptions):
    num_cpus: float = 0.0
    max_ongoing_requests: int = 256
    max_queued_requests: int = 512


@dataclass(frozen=True)
class RequestLimits:
    max_sequences: int = 64  # per request
    max_length: int = 1024  # residues per sequence (also capped by the model and buckets)
    max_new_tokens: int = 256
    max_variants: int = 16  # num_return_sequences / variants per request
    max_beams: int = 8
    max_score_residues: int = 4096  # per /v1/score request (one masked pass per residue)
    max_body_bytes: int = 2_000_000
    max_k: int = 100  # neighbours per query of /v1/search


@dataclass(frozen=True)
class AuthConfig:
    enabled: bool = False  # on in the cluster configs
    token_env: str = "ANKH_SERVE_TOKEN"  # env var (e.g. from a k8s secret) holding the token


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: str = "tiny"  # default model: preset name, HF dir or our run dir; local or gs://
    model_name: str = ""  # id in /v1/models; "" = last path component of checkpoint
    # More checkpoints {name: checkpoint}, chosen per request ("model" / multiplexed model id
    # header), loaded on first use (Serve multiplexing), max_models_per_replica each (LRU).
    models: dict[str, str] = field(default_factory=dict)
    max_models_per_replica: int = 2  # extra models resident per replica; the default is pinned
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # compute dtype; auto: bf16 on GPU/TPU
    host: str = "127.0.0.1"
    port: int = 8000
    app_name: str = "ankh"
    route_prefix: str = "/"
    retry_after_s: float = 1.0  # Retry-After on 503s from back-pressure
    log_json: bool = True  # Serve's structured JSON logs (request ids included)
    ingress: IngressOptions = field(default_factory=IngressOptions)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    generate: GenerateOptions = field(default_factory=GenerateOptions)
    limits: RequestLimits = field(default_factory=RequestLimits)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # /v1/search's {name: jobs.index dir, local or gs://}, opened per replica; the first: default
    indexes: dict[str, str] = field(default_factory=dict)
    search: DeploymentOptions = field(default_factory=DeploymentOptions)
    search_shards: int = 0  # > 0: each index as N Ray actors per search replica (search.md)
    tasks: dict[str, str] = field(default_factory=dict)  # /v1/predict's {name: finetune run}
    max_tasks_per_replica: int = 2
    predict: PredictOptions = field(default_factory=PredictOptions)

    def __post_init__(self) -> None:
        default = self.served_name()
        for what, items in (("models", self.models), ("tasks", self.tasks)):
            noun = "a checkpoint path" if what == "models" else "a jobs.finetune run"
            for name, ref in items.items():
                if not _MODEL_NAME.fullmatch(str(name)):
                    raise ValueError(f"{what}: name {name!r} must match {_MODEL_NAME.pattern}")
                if what == "models" and name == default:
                    raise ValueError(
                        f"models: {name!r} is already the default model's name "
                        "(set model_name or rename it)"
                    )
                if not isinstance(ref, str) or not ref:
                    raise ValueError(f"{what}.{name}: expected {noun}, got {ref!r}")
        for limit in ("max_models_per_replica", "max_tasks_per_replica"):
            if getattr(self, limit) < 1:
                raise ValueError(f"{limit} must be >= 1, got {getattr(self, limit)}")
        if self.search_shards < 0:
            raise ValueError(f"search_shards must be >= 0 (0: unsharded), got {self.search_shards}")

    def served_name(self) -> str:
        return self.model_name or self.checkpoint.rstrip("/").rsplit("/", 1)[-1]

    def catalog(self) -> dict[str, str]:
        """Every served model, ``{name: checkpoint}``; the default model first."""
        return {self.served_name(): self.checkpoint, **self.models}


def to_plain(obj: Any) -> Any:
    """Dataclass -> JSON-able dict (tuples as lists), for Serve's config/args."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    return obj


# ---- HTTP request / response models ---------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
STRICT = _STRICT  # also the OpenAI/TEI-compatible request models' (openai_api.py, tei_api.py)


def _integral(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


# JSON Schema's "integer" includes 2.0 (and JavaScript clients cannot tell 2.0 from 2): an
# integral float is that integer; 2.5, "2" and true are still refused.
Int = Annotated[int, BeforeValidator(_integral), Strict()]


def _model_field() -> Any:
    return Field(
        None,
        description="Model id from /v1/models; default: the default model (or "
        "the serve_multiplexed_model_id header). Unknown ids are a 404.",
    )


Sequences = list[StrictStr]


class EmbedRequest(BaseModel):
    model_config = _STRICT
    sequences: Sequences = Field(
        min_length=1,
        description="Protein sequences (one letter codes; case and whitespace are normalised).",
    )
    pooling: Literal["mean", "none"] = Field(
        "mean", description="mean: one vector per protein; none: one vector per residue."
    )
    layer: Int | None = Field(
        None,
        ge=1,
        description="Encoder layer (1-based); default "
        "the final one. Only layers the deployment serves.",
    )
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="Precision the values are rounded to in the response."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float",
        description="float: JSON numbers; base64: each embedding a base64 string of "
        "little-endian `dtype` values ([dim] or [length*dim], row-major). A raw .npy body: "
        "send `Accept: application/x-npy` (header X-Embedding-Lengths: rows per input).",
    )
    model: StrictStr | None = _model_field()


class EmbedResponse(BaseModel):
    model: str
    dim: int
    pooling: str
    encoding_format: str = "float"
    embeddings: list[Any] = Field(
        description="One entry per input sequence, in input order: "
        "[dim] floats (mean) or [length][dim] (none); a base64 "
        "string each with encoding_format=base64."
    )


Number = StrictFloat | Int
LENGTH_PENALTY = 32.0  # |length_penalty|: 2049.0 ** 32 is finite; ** 100 overflows a float
# temperature / repetition_penalty divide float32 logits: 1e308 overflows float32 (a 500) and
# 1e-300 rounds to 0 (a division by zero); past these bounds sampling changes no further.
SCALE_MIN, SCALE_MAX = 1e-6, 1e6
# Integers that reach int32 arrays (top_k, spans) or a PRNG key (seed): bounded, else a huge
# one was an OverflowError (a 500).
INT32_MAX, SEED_MAX = 2**31 - 1, 2**32 - 1
Offset = Annotated[Int, Field(ge=0, le=INT32_MAX)]


class GenerateRequest(BaseModel):
    """``Ankh.generate``: greedy, sampling or beam search (HF ``generate`` names)."""

    model_config = _STRICT
    sequences: Sequences = Field(
        min_length=1, description="Prompts; <extra_id_k> sentinels mark spans to infill."
    )
    max_new_tokens: Int | None = Field(
        None, ge=1, description="Default: 64, or limits.max_new_tokens if lower."
    )
    min_new_tokens: Int = Field(
        0,
        ge=0,
        description="</s> is barred until this many tokens "
        "are generated (HF's name); at most max_new_tokens.",
    )
    do_sample: StrictBool = Field(False, description="false: greedy (or beam search).")
    temperature: Number = Field(1.0, ge=SCALE_MIN, le=SCALE_MAX)
    top_k: Int = Field(0, ge=0, le=INT32_MAX, description="0 = no top-k filter.")
    top_p: Number = Field(1.0, gt=0, le=1)
    num_beams: Int = Field(1, ge=1)
    num_return_sequences: Int = Field(1, ge=1)
    repetition_penalty: Number = Field(1.0, ge=SCALE_MIN, le=SCALE_MAX)
    # Beam scores divide by length ** length_penalty (a Python float): bounded so that it
    # cannot overflow (an OverflowError, found by tests/serve/test_fuzz.py).
    length_penalty: Number = Field(1.0, ge=-LENGTH_PENALTY, le=LENGTH_PENALTY)
    seed: Int = Field(0, ge=0, le=SEED_MAX, description="Same seed + request -> same output.")
    model: StrictStr | None = _model_field()


class GenerateResponse(BaseModel):
    model: str
    outputs: list[list[str]] = Field(description="Per input, num_return_sequences strings.")


class VariantsRequest(BaseModel):
    """``Ankh.variants``: full-length variants of a parent by sentinel infilling."""

    model_config = _STRICT
    parent: StrictStr = Field(min_length=1)
    n: Int = Field(10, ge=1, description="Variants wanted.")
    mask_fraction: Number = Field(0.4, gt=0, le=1)
    temperature: Number = Field(1.5, ge=SCALE_MIN, le=SCALE_MAX)
    top_k: Int = Field(0, ge=0, le=INT32_MAX)
    top_p: Number = Field(1.0, gt=0, le=1)
    spans: list[tuple[Offset, Offset]] | None = Field(
        None, description="Fixed 0-based [start, end) spans to infill (default: random)."
    )
    same_length: StrictBool = True
    seed: Int = Field(0, ge=0, le=SEED_MAX)
    model: StrictStr | None = _model_field()


class ScoreRequest(BaseModel):
    """Likelihood scores of sequences and/or mutation scores against a wild type."""

    model_config = _STRICT
    sequences: Sequences | None = Field(None, min_length=1, description="Sequences to score.")
    per_residue: StrictBool = Field(False, description="Include per-residue log-probs.")
    wild_type: StrictStr | None = Field(None, min_length=1)
    mutants: list[StrictStr] | None = Field(
        None, min_length=1, description="e.g. 'A12G' or 'A12G:K40R' (1-based), scored vs wild_type."
    )
    model: StrictStr | None = _model_field()

    @model_validator(mode="after")
    def _something_to_score(self) -> ScoreRequest:
        if self.sequences is None and self.wild_type is None:
            raise ValueError("give 'sequences' and/or 'wild_type' with 'mutants'")
        if (self.wild_type is None) != (self.mutants is None):
            raise ValueError("'wild_type' and 'mutants' go together")
        return self


class ScoreResponse(BaseModel):
    model: str
    scores: list[dict[str, Any]] | None = None
    mutation_scores: list[float] | None = None


class LimitError(ValueError):
    """A request over a configured limit (HTTP 413); the message names the limit."""


class UnknownModelError(LookupError):
    """A model name this app does not serve (HTTP 404); the message lists the served ones."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown model {name!r}; served: {known}")


class ModelLoadError(RuntimeError):
    """A configured model that could not be loaded (HTTP 500 naming the model and cause)."""


def effective_max_length(limits: RequestLimits, model_max: int, bucket_max: int | None) -> int:
    caps = [limits.max_length, model_max] + ([bucket_max - 1] if bucket_max else [])
    return min(caps)


def check_sequences(seqs: list[str], limits: RequestLimits, max_length: int) -> None:
    """Count and raw length limits, before any tokenisation work is done."""
    if len(seqs) > limits.max_sequences:
        raise LimitError(
            f"too many sequences: {len(seqs)} > limits.max_sequences={limits.max_sequences}"
        )
    for i, s in enumerate(seqs):
        if len(s) > max_length:  # whitespace is not a residue; a sentinel is one token
            n = len(SENTINEL_RE.sub("X", "".join(s.split())))
            if n > max_length:
                raise LimitError(f"sequence {i} has {n} residues > limits.max_length={max_length}")


def check_generate(req: GenerateRequest, limits: RequestLimits) -> GenerationConfig:
    """Limit checks; returns the request's settings (``max_new_tokens`` filled in), validated by
    ``GenerationConfig`` (its cross-field rules are a 422 naming the field)."""
    if req.max_new_tokens is None:
        req = req.model_copy(update={"max_new_tokens": min(64, limits.max_new_tokens)})
    if req.max_new_tokens > limits.max_new_tokens:
        raise LimitError(
            f"max_new_tokens {req.max_new_tokens} > limits.max_new_tokens={limits.max_new_tokens}"
        )
    if req.num_return_sequences > limits.max_variants:
        raise LimitError(
            f"num_return_sequences {req.num_return_sequences} > "
            f"limits.max_variants={limits.max_variants}"
        )
    if req.num_beams > limits.max_beams:
        raise LimitError(f"num_beams {req.num_beams} > limits.max_beams={limits.max_beams}")
    return GenerationConfig(**req.model_dump(exclude={"sequences", "model"}))


def check_variants(
    req: VariantsRequest, limits: RequestLimits, max_length: int
) -> GenerationConfig:
    """Limit checks; returns the request's sampling settings."""
    check_sequences([req.parent], limits, max_length)
    if req.n > limits.max_variants:
        raise LimitError(f"n {req.n} > limits.max_variants={limits.max_variants}")
    return GenerationConfig(
        do_sample=True, **req.model_dump(include={"temperature", "top_k", "top_p", "seed"})
    )


def check_score(req: ScoreRequest, limits: RequestLimits, max_length: int) -> None:
    seqs = list(req.sequences or []) + ([req.wild_type] if req.wild_type else [])
    check_sequences(seqs, limits, max_length)
    if req.mutants and len(req.mutants) > limits.max_sequences:
        raise LimitError(
            f"too many mutants: {len(req.mutants)} > limits.max_sequences={limits.max_sequences}"
        )
    total = sum(len("".join(s.split())) for s in req.sequences or [])
    if total > limits.max_score_residues:
        raise LimitError(
            f"{total} residues to score > limits.max_score_residues={limits.max_score_residues}"
        )
