"""OpenAI-compatible embeddings: ``POST /v1/embeddings`` (``GET /v1/models`` is ours, already in
OpenAI's list shape), so the ``openai`` SDK and tools built on it work unchanged::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=TOKEN)
    client.embeddings.create(model="ankh-base", input=["MKTAYIAK", "GSHM"]).data[0].embedding

A vector is the offline mean-pooled ``Ankh.embed`` (no normalisation); ``usage`` counts
residues. Status codes are ours (``http.map_exception``); only the error body takes OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape, which the SDK reads.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictStr

from ankh_platform.serve.formats import b64_array, check_dimensions, detail_text
from ankh_platform.serve.schema import STRICT, Int

PATH = "/v1/embeddings"
_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


class EmbeddingsRequest(BaseModel):
    """OpenAI's ``CreateEmbeddingRequest`` minus token-id input (a protein is letters)."""

    model_config = STRICT
    input: StrictStr | Annotated[list[StrictStr], Field(min_length=1)] = Field(
        description="A protein sequence or a list of them (one letter codes)."
    )
    model: StrictStr | None = Field(
        None,
        description="Model id from /v1/models; default: the default model. Unknown ids are a 404.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 (the openai SDK's default)."
    )
    dimensions: Int | None = Field(
        None,
        ge=1,
        description="Only the model's own width is accepted (Ankh embeddings are not truncatable).",
    )
    user: StrictStr | None = Field(None, description="Accepted and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Residues embedded.")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


async def embeddings(svc: Any, req: EmbeddingsRequest) -> dict[str, Any]:
    """``svc``: the ingress (``http.Service``)."""
    seqs = [req.input] if isinstance(req.input, str) else req.input
    if req.dimensions is not None:
        check_dimensions(req.dimensions, (await svc.describe(req.model))["d_model"])
    name, norm, out = await svc.embed_arrays(req.model, seqs, route=PATH)
    if req.encoding_format == "base64":
        vecs: list[Any] = [b64_array(v, "float32") for v in out]
    else:
        vecs = out.astype("float32").tolist()
    residues = sum(len(s) for s in norm)
    return {
        "object": "list",
        "model": name,
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)],
        "usage": {"prompt_tokens": residues, "total_tokens": residues},
    }


def error_style(e: Any, request_id: str) -> tuple[int, dict[str, Any]]:
    """Our status; OpenAI's error body (the SDK raises e.g. ``UnprocessableEntityError``)."""
    kind = _TYPES.get(e.status, "server_error" if e.status >= 500 else "invalid_request_error")
    return e.status, {
        "error": {"message": detail_text(e.detail), "type": kind, "param": None, "code": None},
        "request_id": request_id,
    }


def register(api: FastAPI, svc: Any, run: Any) -> dict[str, Any]:
    """Add the route to ``api`` (``http.build_api``); returns ``{path: error style}``."""

    @api.post(PATH, response_model=EmbeddingsResponse, tags=["OpenAI-compatible"])
    async def create_embeddings(req: EmbeddingsRequest) -> Response:
        """OpenAI ``embeddings.create``: one mean-pooled vector per input, in input order."""
        return await run(lambda: embeddings(svc, req), PATH)

    return {PATH: error_style}
