"""HTTP plumbing of the ingress: FastAPI routes, auth/body-size guard, error -> status mapping.

Errors: 401 bad/missing bearer token, 404 unknown model (the message lists the served ones),
413 over a limit (the message names it), 422 malformed input (names the field or sequence),
503 + ``Retry-After`` when over capacity or a replica is being replaced, 500 for a configured
model that fails to load (named) or a bug (logged). The OpenAI- and TEI-compatible routes
(``openai_api.py``, ``tei_api.py``) go through the same guard, validation and mapping; each
only restyles the error body (and TEI turns "over capacity" into its 429).
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ankh_platform.serve import openai_api, tei_api
from ankh_platform.serve.formats import NPY
from ankh_platform.serve.openapi import constrain
from ankh_platform.serve.predict import PredictRequest, PredictResponse
from ankh_platform.serve.schema import (
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    LimitError,
    ModelLoadError,
    RequestLimits,
    ScoreRequest,
    ScoreResponse,
    ServeConfig,
    UnknownModelError,
    VariantsRequest,
)
from ankh_platform.serve.search import SearchRequest, SearchResponse

log = logging.getLogger("ray.serve")  # Serve formats this logger (JSON, request ids)
OPEN_PATHS = {"/healthz"}  # reachable without a token (load balancer probes)
ROUTES = {
    "/v1/embed",
    "/v1/generate",
    "/v1/variants",
    "/v1/score",
    "/v1/search",
    "/v1/predict",
    "/healthz",
    "/v1/models",
    "/docs",
    "/openapi.json",
}  # metric tags: a fixed set (+ the compatible APIs' paths)
EXTENSIONS = (openai_api, tei_api)  # each: register(api, svc, run) -> {path: error style}


class Service(Protocol):
    """What the routes need from the ingress (``app.Ingress``): auth, limits and metrics, and
    one coroutine per route. The app depends on this module, never the other way round."""

    token: str | None
    cfg: ServeConfig

    def observe(self, route: str, status: int, seconds: float) -> None: ...
    async def embed(self, req: EmbedRequest, npy: bool = False) -> dict[str, Any] | Response: ...
    async def embed_arrays(
        self,
        model: str | None,
        sequences: list[str],
        pooling: str = "mean",
        layer: int | None = None,
        truncate: str | None = None,
        route: str = "/v1/embed",
    ) -> tuple[str, list[str], Any]: ...
    async def describe(self, model: str | None) -> dict[str, Any]: ...
    async def generate(self, req: GenerateRequest) -> dict[str, Any]: ...
    async def variants(self, req: VariantsRequest) -> dict[str, Any]: ...
    async def score(self, req: ScoreRequest) -> dict[str, Any]: ...
    async def search(self, req: SearchRequest) -> dict[str, Any]: ...
    async def predict(self, req: PredictRequest) -> dict[str, Any]: ...
    async def health(self) -> dict[str, Any]: ...
    async def models(self) -> dict[str, Any]: ...
    async def schema_facts(self) -> dict[str, Any]: ...


class HTTPError(Exception):
    """``kind`` "overloaded" marks back-pressure (TEI answers it with 429, we with 503)."""

    def __init__(
        self, status: int, detail: Any, headers: dict[str, str] | None = None, kind: str = ""
    ):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.kind = status, detail, headers, kind


ErrorStyle = Callable[[HTTPError, str], tuple[int, dict[str, Any]]]  # (error, request id)


def request_id() -> str:
    try:
        return serve.context._get_serve_request_context().request_id
    except Exception:  # outside a Serve request (e.g. schema generation)
        return ""


def json_response(
    payload: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    # json.dumps of plain lists is much faster than FastAPI's jsonable_encoder on big arrays.
    return Response(
        json.dumps(payload, allow_nan=False), status, headers, media_type="application/json"
    )


def error_response(e: HTTPError) -> Response:
    return json_response({"detail": e.detail, "request_id": request_id()}, e.status, e.headers)


def map_exception(e: BaseException, retry_after_s: float) -> HTTPError:
    """Model/Serve errors -> HTTP: bad input 4xx, capacity and replica loss 503 (retryable)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    from ankh.tokenizer import TokenizerError

    c = getattr(e, "cause", None) or e  # the user exception inside a RayTaskError
    retry = {"Retry-After": str(max(1, int(np.ceil(retry_after_s))))}
    if isinstance(c, HTTPError):
        return c
    if isinstance(c, LimitError):
        return HTTPError(413, str(c))
    if isinstance(c, UnknownModelError):
        return HTTPError(404, str(c))
    if isinstance(c, ModelLoadError):
        return HTTPError(500, str(c))
    if isinstance(c, (TokenizerError, ValueError, TypeError)):
        return HTTPError(422, str(c))
    if isinstance(c, BackPressureError):
        return HTTPError(503, f"over capacity, retry later: {c.message}", retry, "overloaded")
    if isinstance(c, (DeploymentUnavailableError, RayActorError)):
        return HTTPError(503, "model replica unavailable (being replaced); retry", retry)
    log.error("unexpected error", exc_info=c)
    return HTTPError(500, f"internal error: {type(c).__name__}")


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's errors without the input (it may be NaN -> a 500, or 10k sequences)."""
    errs = []
    for e in exc.errors()[:20]:
        msg = e.get("msg", "")
        if e.get("type") == "json_invalid":
            msg = f"body is not valid JSON: {(e.get('ctx') or {}).get('error', msg)}"
        errs.append(
            {"loc": [str(x) for x in e.get("loc", ())], "msg": msg, "type": e.get("type", "")}
        )
    return errs


def _guard(svc: Service, request: Request) -> None:
    """Bearer token (constant-time compare) and declared body size, before parsing."""
    if svc.token and request.url.path not in OPEN_PATHS:
        got = request.headers.get("authorization", "")
        if not hmac.compare_digest(got.encode(), f"Bearer {svc.token}".encode()):
            raise HTTPError(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
    size, limit = request.headers.get("content-length"), svc.cfg.limits.max_body_bytes
    if size and size.isdigit() and int(size) > limit:
        raise HTTPError(413, f"body of {size} bytes > limits.max_body_bytes={limit}")


async def _schema_facts(svc: Service) -> None:
    """The default model's facts for the schema; without them (a replica being replaced)
    the schema states the config's limits only."""
    try:
        await svc.schema_facts()
    except Exception as e:
        log.warning("OpenAPI schema without model facts: %s", e)


def build_api(svc: Service | None) -> FastAPI:
    """The FastAPI app; ``svc=None`` only for generating the OpenAPI schema offline."""
    import ankh

    api = FastAPI(
        title="Ankh serving API",
        version=ankh.__version__,
        description="Protein embeddings, generation and scoring with Ankh.",
    )

    styles: dict[str, ErrorStyle] = {}  # path -> error body of a compatible API

    def failure(e: HTTPError, path: str) -> Response:
        if path not in styles:
            return error_response(e)
        status, body = styles[path](e, request_id())
        return json_response(body, status, e.headers)

    @api.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return failure(HTTPError(422, _validation_errors(exc)), request.url.path)

    @api.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers a body it cannot decode (not UTF-8) with a bare 400 "error parsing
        # the body": a 422 naming the cause, like any other unreadable JSON.
        status, detail = exc.status_code, exc.detail
        if status == 400 and exc.__cause__ is not None:
            status, detail = 422, f"body is not valid JSON: {exc.__cause__}"
        return failure(HTTPError(status, detail, getattr(exc, "headers", None)), request.url.path)

    @api.middleware("http")
    async def guard(request: Request, call_next):
        t0 = time.perf_counter()
        try:
            _guard(svc, request)
            if request.url.path == "/openapi.json":
                await _schema_facts(svc)
            response = await call_next(request)
        except HTTPError as e:
            response = failure(e, request.url.path)
        path = request.url.path
        route = path if path in ROUTES or path in styles else "other"
        svc.observe(route, response.status_code, time.perf_counter() - t0)
        return response

    async def run(
        op: Callable[[], Awaitable[dict[str, Any] | Response]], path: str = ""
    ) -> Response:
        try:
            out = await op()
            return out if isinstance(out, Response) else json_response(out)
        except Exception as e:
            return failure(map_exception(e, svc.cfg.retry_after_s), path)

    _routes(api, svc, run)
    for ext in EXTENSIONS:
        styles.update(ext.register(api, svc, run))
    base = api.openapi

    def served_schema() -> dict[str, Any]:  # the running config's limits (openapi.constrain)
        if svc is None:
            return constrain(base(), RequestLimits())
        schema = constrain(
            base(), svc.cfg.limits, getattr(svc, "facts", None), list(svc.cfg.catalog())
        )
        if not svc.cfg.indexes:  # no index served: the schema does not offer the route
            schema["paths"].pop("/v1/search", None)
        if not svc.cfg.tasks:  # no fine-tuned run served: nor this one
            schema["paths"].pop("/v1/predict", None)
        return schema

    api.openapi = served_schema  # type: ignore[method-assign]
    return api


def _routes(api: FastAPI, svc: Service, run: Callable[..., Awaitable[Response]]) -> None:
    """Our own routes (``/v1/...``, ``/healthz``)."""

    @api.post(
        "/v1/embed",
        response_model=EmbedResponse,
        responses={
            200: {
                "content": {NPY: {}},
                "description": "JSON, or with `Accept: "
                "application/x-npy` one .npy array [rows, dim]",
            }
        },
    )
    async def embed(req: EmbedRequest, request: Request) -> Response:
        """One embedding per input sequence, in input order."""
        npy = NPY in request.headers.get("accept", "")
        return await run(lambda: svc.embed(req, npy))

    @api.post("/v1/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest) -> Response:
        """``Ankh.generate``: per input, ``num_return_sequences`` decoded strings."""
        return await run(lambda: svc.generate(req))

    @api.post("/v1/variants")
    async def variants(req: VariantsRequest) -> Response:
        """``Ankh.variants``: ``n`` full-length variants of ``parent`` by infilling."""
        return await run(lambda: svc.variants(req))

    @api.post("/v1/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest) -> Response:
        """Log-likelihood / pseudo-log-likelihood per sequence; mutation scores vs wild type."""
        return await run(lambda: svc.score(req))

    @api.post("/v1/search", response_model=SearchResponse)
    async def search(req: SearchRequest) -> Response:
        """k nearest neighbours per query (sequences or vectors) in a served index
        (404 unknown index, 413 k or queries over a limit, 422 wrong dimension)."""
        return await run(lambda: svc.search(req))

    @api.post("/v1/predict", response_model=PredictResponse)
    async def predict(req: PredictRequest) -> Response:
        """A fine-tuned run's predictions (``jobs.finetune``; the records ``jobs.predict``
        writes), one per sequence (404 unknown task, 413 over a limit, 422 a bad sequence)."""
        return await run(lambda: svc.predict(req))

    @api.get("/healthz")
    async def healthz() -> Response:
        """200 when every deployment answers within 5 s, else 503."""
        return await run(svc.health)

    @api.get("/v1/models")
    async def models() -> Response:
        """The served model(s) and their limits."""
        return await run(svc.models)


def openapi_schema() -> dict[str, Any]:
    """The HTTP API's OpenAPI schema, without starting anything."""
    return build_api(None).openapi()
