"""Text Embeddings Inference (TEI)-compatible routes: ``POST /embed``, ``/embed_all``, ``/``
(TEI's model-type route, where ``huggingface_hub.InferenceClient(base_url).feature_extraction``
posts) and ``GET /info``, with TEI's request fields and status codes::

    InferenceClient(base_url="http://127.0.0.1:8000", api_key=TOKEN).feature_extraction(seqs)

Same operation as ``/v1/embed`` (``Ingress.embed_arrays``); what differs is TEI's: ``normalize``
defaults to true (unit vectors), ``truncate`` cuts over-long inputs instead of refusing them,
errors are ``{"error", "error_type"}``, and "overloaded" (the Embedder's
``max_ongoing_requests`` busy on every replica and ``max_queued_requests`` waiting: Serve's
back-pressure, a 503 on our routes) is TEI's 429. ``/embed_all`` is per residue, without the
``</s>`` token (TEI returns every token).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictBool, StrictStr

from ankh_platform.serve.formats import check_dimensions, detail_text, l2_normalize
from ankh_platform.serve.schema import STRICT, Int

PATHS = ("/embed", "/embed_all", "/", "/info")
_ERROR_TYPES = {
    400: "empty",
    401: "unauthorized",
    413: "validation",
    422: "validation",
    429: "overloaded",
    503: "unhealthy",
}
Inputs = StrictStr | Annotated[list[StrictStr], Field(min_length=1)]
Direction = Literal["right", "left", "Right", "Left"]


class TEIEmbedAllRequest(BaseModel):
    model_config = STRICT
    inputs: Inputs = Field(description="A protein sequence or a list of them.")
    truncate: StrictBool | None = Field(
        False,
        description="Cut inputs over the maximum "
        "length (GET /info max_input_length) instead of a 413.",
    )
    truncation_direction: Direction = "right"
    prompt_name: StrictStr | None = Field(None, description="No prompts: only null.")


class TEIEmbedRequest(TEIEmbedAllRequest):
    normalize: StrictBool = Field(True, description="Unit-length vectors (TEI's default).")
    dimensions: Int | None = Field(None, ge=1, description="Only the model's width.")


async def embed(svc: Any, req: TEIEmbedAllRequest, per_residue: bool, route: str) -> list:
    """``[[float]]`` per input (``/embed``) or ``[[[float]]]`` per input and residue."""
    if req.prompt_name is not None:
        raise ValueError(f"prompt_name {req.prompt_name!r}: this model has no prompts")
    if getattr(req, "dimensions", None) is not None:
        check_dimensions(req.dimensions, (await svc.describe(None))["d_model"])
    seqs = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    cut = req.truncation_direction.lower() if req.truncate else None
    _, _, out = await svc.embed_arrays(
        None, seqs, "none" if per_residue else "mean", truncate=cut, route=route
    )
    if per_residue:
        return [a.astype("float32").tolist() for a in out]
    vecs = l2_normalize(out) if req.normalize else out
    return vecs.astype("float32").tolist()


async def info(svc: Any) -> dict[str, Any]:
    import ankh

    d, e = await svc.describe(None), svc.cfg.embed
    replicas = (e.autoscaling or {}).get("max_replicas", e.num_replicas)
    return {
        "model_id": d["id"],
        "model_sha": None,
        "model_dtype": d["dtype"],
        "model_type": {"embedding": {"pooling": "mean"}},
        # past this many requests per ingress replica: 429
        "max_concurrent_requests": e.max_ongoing_requests * replicas + e.max_queued_requests,
        "max_input_length": d["max_length"],
        "max_batch_tokens": e.batch_tokens,
        "max_batch_requests": e.max_batch_size,
        "max_client_batch_size": svc.cfg.limits.max_sequences,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "version": ankh.__version__,
        "sha": None,
        "docker_label": None,
        "dim": d["d_model"],
        "per_residue": d["per_residue"],
    }


def error_style(e: Any, request_id: str) -> tuple[int, dict[str, Any]]:
    """TEI's status codes and ``{"error", "error_type"}`` body; back-pressure is 429."""
    status = 429 if e.kind == "overloaded" else e.status
    kind = _ERROR_TYPES.get(status, "backend")
    return status, {"error": detail_text(e.detail), "error_type": kind, "request_id": request_id}


def register(api: FastAPI, svc: Any, run: Any) -> dict[str, Any]:
    """Add the routes to ``api`` (``http.build_api``); returns ``{path: error style}``."""
    tags = ["TEI-compatible"]

    @api.post("/embed", response_model=list[list[float]], tags=tags)
    async def tei_embed(req: TEIEmbedRequest) -> Response:
        """TEI ``/embed``: one mean-pooled vector per input (unit length unless normalize=false)."""
        return await run(lambda: embed(svc, req, False, "/embed"), "/embed")

    @api.post("/", response_model=list[list[float]], tags=tags)
    async def tei_predict(req: TEIEmbedRequest) -> Response:
        """TEI's model-type route; for an embedding model the same as ``/embed``."""
        return await run(lambda: embed(svc, req, False, "/"), "/")

    @api.post("/embed_all", response_model=list[list[list[float]]], tags=tags)
    async def tei_embed_all(req: TEIEmbedAllRequest) -> Response:
        """TEI ``/embed_all``: per input, one vector per residue."""
        return await run(lambda: embed(svc, req, True, "/embed_all"), "/embed_all")

    @api.get("/info", tags=tags)
    async def tei_info() -> Response:
        """TEI ``/info``: model id, dtype, limits (plus ``dim``)."""
        return await run(lambda: info(svc), "/info")

    return dict.fromkeys(PATHS, error_style)
