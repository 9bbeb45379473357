"""``POST /v1/search``: k nearest neighbours in a served index (``jobs.index`` directory).

The search deployment opens every configured index once per replica (``ServeConfig.indexes``,
local or ``gs://``). Sequences are embedded by the embedding deployment -- the served model
whose checkpoint is the index's model, at the index's layer -- exactly as ``/v1/embed`` would,
then searched; vectors are searched as given. ``build_app`` refuses an index whose model or
layer this deployment does not serve, before anything starts.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, StrictStr, model_validator
from ray import serve

from ankh_platform.serve.schema import (
    STRICT,
    Int,
    LimitError,
    Number,
    RequestLimits,
    ServeConfig,
    UnknownModelError,
)

VALUE_MAX = 1e6  # vector components: larger ones overflow the norm (cosine) in float32
Value = Annotated[Number, Field(ge=-VALUE_MAX, le=VALUE_MAX)]


class UnknownIndexError(UnknownModelError):
    """An index name this app does not serve (HTTP 404, like an unknown model)."""

    def __init__(self, name: str, known: list[str]):
        LookupError.__init__(self, f"unknown index {name!r}; served: {known}")


class SearchRequest(BaseModel):
    model_config = STRICT
    sequences: list[StrictStr] = Field(
        None,
        min_length=1,
        description="Query proteins, embedded with the index's model and layer. "
        "Exactly one of sequences / vectors.",
    )
    vectors: list[list[Value]] = Field(
        None,
        min_length=1,
        description="Query vectors of the index's dimension (the schema's item count when the "
        "served indexes share one). Exactly one of sequences / vectors.",
    )
    k: Int = Field(10, ge=1, description="Neighbours per query (at most limits.max_k).")
    nprobe: Int | None = Field(
        None, ge=1, le=1 << 20, description="Inverted lists visited; default: the index's."
    )
    index: StrictStr | None = Field(None, description="Index name; default: the first served.")

    @model_validator(mode="after")
    def _one_input(self) -> SearchRequest:
        if (self.sequences is None) == (self.vectors is None):
            raise ValueError("give exactly one of sequences / vectors")
        return self


class Neighbour(BaseModel):
    id: str
    score: float
    rank: int
    length: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class SearchResponse(BaseModel):
    index: str
    model: str
    k: int
    results: list[list[Neighbour]] = Field(description="Per query, in input order: best first.")


def index_facts(path: str) -> dict[str, Any]:
    from ankh_platform.search import manifest

    m = manifest.require(path)
    src = m["source"]
    return {"model": src["model"], "layer": src["layer"], "dim": src["dim"], "count": m["count"]}


def check_indexes(cfg: ServeConfig) -> dict[str, dict[str, Any]]:
    """Every configured index: readable, of a served model, at a served layer (else refuse)."""
    facts, served = {}, {ckpt: name for name, ckpt in cfg.catalog().items()}
    for name, path in cfg.indexes.items():
        f = index_facts(path)
        if f["model"] not in served:
            raise ValueError(
                f"index {name!r} ({path}) holds vectors of model {f['model']!r}, which this "
                f"deployment does not serve (served: {sorted(served)})"
            )
        if f["layer"] and f["layer"] not in cfg.embed.layers:
            raise ValueError(f"index {name!r} needs encoder layer {f['layer']}: add embed.layers")
        facts[name] = {**f, "served_model": served[f["model"]]}
    return facts


def check_search(req: SearchRequest, limits: RequestLimits, facts: dict[str, Any]) -> str:
    """The index name; 404 unknown index, 413 over a limit, 422 a wrong dimension."""
    if not facts:
        raise UnknownIndexError(req.index or "", [])
    name = req.index or next(iter(facts))
    if name not in facts:
        raise UnknownIndexError(name, list(facts))
    if req.k > limits.max_k:
        raise LimitError(f"k={req.k} > limits.max_k={limits.max_k}")
    n = len(req.sequences or req.vectors or [])
    if n > limits.max_sequences:
        raise LimitError(f"{n} queries > limits.max_sequences={limits.max_sequences}")
    dim = facts[name]["dim"]
    for i, v in enumerate(req.vectors or []):
        if len(v) != dim:
            raise ValueError(f"vectors[{i}] has dimension {len(v)}; index {name!r} has {dim}")
    return name


@serve.deployment(name="AnkhSearch")
class SearchDeployment:
    def __init__(self, indexes: dict[str, str], shards: int = 0):
        from ankh_platform.search.query import open_index

        # shards > 0: actors owned by this replica, ended with it
        self.indexes = {name: open_index(path, shards) for name, path in indexes.items()}

    def search(self, name: str, vectors: np.ndarray, k: int, nprobe: int | None) -> list:
        ix = self.indexes[name]
        scores, labels = ix.search(vectors, k, nprobe or 0)
        out = []
        for q in range(len(labels)):
            keep = labels[q] >= 0
            rows = ix.rows(labels[q][keep]).to_pylist()
            out.append(
                [
                    {
                        "id": r.pop("id"),
                        "score": float(s),
                        "rank": j + 1,
                        "length": r.pop("length"),
                        "metadata": r,
                    }
                    for j, (r, s) in enumerate(zip(rows, scores[q][keep]))
                ]
            )
        return out

    def health(self) -> bool:
        return True


async def search(ingress: Any, req: SearchRequest) -> dict[str, Any]:
    """The ``/v1/search`` operation of ``app.Ingress`` (limits, embed, search)."""
    name = check_search(req, ingress.limits, ingress.index_facts)
    facts = ingress.index_facts[name]
    if req.sequences is not None:
        layer = facts["layer"] or None
        _, _, vectors = await ingress.embed_arrays(
            facts["served_model"], req.sequences, "mean", layer, route="/v1/search"
        )
        vectors = np.asarray(vectors, np.float32)
    else:
        vectors = np.asarray(req.vectors, np.float32)
    results = await ingress.searcher.search.remote(name, vectors, req.k, req.nprobe)
    return {"index": name, "model": facts["model"], "k": req.k, "results": results}
