"""The HTTP ingress (FastAPI) and the Serve application: ``build_app(args)`` / ``app``.

    serve run ankh_platform.serve_app:build_app checkpoint=/path/to/hf_dir
    serve deploy cluster/serve-cluster.yaml          # import_path + args, auth on
    serve build ankh_platform.serve_app:app -o cfg.yaml

Routes: ``POST /v1/embed``, ``/v1/generate``, ``/v1/variants``, ``/v1/score``, ``GET /healthz``,
``/v1/models``, ``/docs`` and ``/openapi.json``. Errors: 401 bad/missing bearer token, 404
unknown model, 413 over a limit (the message names it), 422 malformed input (names the field or
sequence), 503 + ``Retry-After`` when over capacity or a replica is being replaced.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from ankh_platform.configlib import from_dict
from ankh_platform.serve_embed import Embedder
from ankh_platform.serve_generate import Generator
from ankh_platform.serve_schema import (EmbedRequest, EmbedResponse, GenerateRequest,
                                        GenerateResponse, LimitError, ScoreRequest, ScoreResponse,
                                        ServeConfig, VariantsRequest, check_generate, check_score,
                                        check_sequences, check_variants, effective_max_length,
                                        to_plain)

log = logging.getLogger("ray.serve")
_OPEN_PATHS = {"/healthz"}  # reachable without a token (load balancer probes)


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def _request_id() -> str:
    try:
        return serve.context._get_serve_request_context().request_id
    except Exception:  # outside a Serve request (e.g. schema generation)
        return ""


def _cause(e: BaseException) -> BaseException:
    """The user-level exception inside a Ray task error (message without the traceback)."""
    return getattr(e, "cause", None) or e


def map_exception(e: BaseException, retry_after_s: float) -> HTTPError:
    """Model/Serve errors -> HTTP: bad input 4xx, capacity and replica loss 503 (retryable)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    from ankh.tokenizer import TokenizerError

    c = _cause(e)
    retry = {"Retry-After": str(max(1, int(np.ceil(retry_after_s))))}
    if isinstance(c, HTTPError):
        return c
    if isinstance(c, LimitError):
        return HTTPError(413, str(c))
    if isinstance(c, (TokenizerError, ValueError, TypeError)):
        return HTTPError(422, str(c))
    if isinstance(c, BackPressureError):
        return HTTPError(503, f"over capacity, retry later: {c.message}", retry)
    if isinstance(c, (DeploymentUnavailableError, RayActorError)):
        return HTTPError(503, "model replica unavailable (being replaced); retry", retry)
    log.exception("unexpected error", exc_info=c)
    return HTTPError(500, f"internal error: {type(c).__name__}")


class Ingress:
    """Holds the config and handles; ``build_api`` turns it into the FastAPI routes."""

    def __init__(self, embedder: DeploymentHandle, generator: DeploymentHandle | None,
                 config: dict[str, Any]):
        self.cfg = from_dict(ServeConfig, config)
        self.embedder, self.generator = embedder, generator
        self.name = self.cfg.served_name()
        self.token = None
        if self.cfg.auth.enabled:
            self.token = os.environ.get(self.cfg.auth.token_env, "")
            if not self.token:
                raise RuntimeError(f"auth.enabled but ${self.cfg.auth.token_env} is empty: set it "
                                   "(e.g. from a secret) or disable auth")
        self._info: dict[str, Any] | None = None
        self._tok = None
        self.m_requests = metrics.Counter("ankh_http_requests", description="HTTP requests",
                                          tag_keys=("route", "status"))
        self.m_latency = metrics.Histogram(
            "ankh_http_latency_seconds", description="Ingress latency per route (s)",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            tag_keys=("route",))
        self.m_sequences = metrics.Counter("ankh_http_sequences", tag_keys=("route",),
                                           description="Sequences received per route")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    # ---- helpers ---------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        if self._info is None:
            from ankh.tokenizer import AnkhTokenizer

            info = await self.embedder.info.remote()
            self._tok = AnkhTokenizer(info.pop("vocab"))
            self._info = info
        return self._info

    async def max_length(self) -> int:
        info = await self.info()
        return effective_max_length(self.cfg.limits, info["max_residues"], None)

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise HTTPError(404, f"unknown model {model!r}; served: [{self.name!r}]")

    def normalise(self, seqs: list[str], sentinels: bool = False) -> list[str]:
        """Upper case, no whitespace, every letter in the alphabet (else 422 naming it)."""
        from ankh.tokenizer import TokenizerError

        out = []
        for i, s in enumerate(seqs):
            norm = self._tok.normalize(s)
            if not norm:
                raise HTTPError(422, f"sequence {i} is empty")
            try:
                self._tok.encode(norm, allow_sentinels=sentinels)
            except TokenizerError as e:
                raise HTTPError(422, f"sequence {i}: {e}") from None
            out.append(norm)
        return out

    def need_generator(self) -> DeploymentHandle:
        if self.generator is None:
            raise HTTPError(404, "generation is not enabled in this deployment (generate.enabled)")
        return self.generator


def _json(payload: dict[str, Any], status: int = 200, headers: dict | None = None) -> Response:
    # json.dumps of plain lists is much faster than FastAPI's jsonable_encoder on big arrays.
    return Response(json.dumps(payload, allow_nan=False), status, headers,
                    media_type="application/json")


def build_api(svc: Ingress | None) -> FastAPI:
    """The FastAPI app; ``svc=None`` only for generating the OpenAPI schema offline."""
    import ankh

    api = FastAPI(title="Ankh serving API", version=ankh.__version__,
                  description="Protein embeddings, generation and scoring with Ankh.")
    limits = svc.cfg.limits if svc else None

    @api.middleware("http")
    async def guard(request: Request, call_next):
        t0, route = time.perf_counter(), request.url.path
        try:
            if svc and svc.token and route not in _OPEN_PATHS:
                got = request.headers.get("authorization", "")
                if not hmac.compare_digest(got.encode(), f"Bearer {svc.token}".encode()):
                    raise HTTPError(401, "missing or invalid bearer token",
                                    {"WWW-Authenticate": "Bearer"})
            size = request.headers.get("content-length")
            if limits and size and size.isdigit() and int(size) > limits.max_body_bytes:
                raise HTTPError(413, f"body of {size} bytes > limits.max_body_bytes="
                                     f"{limits.max_body_bytes}")
            response = await call_next(request)
        except HTTPError as e:
            response = _json({"detail": e.detail, "request_id": _request_id()}, e.status, e.headers)
        if svc:
            dt = time.perf_counter() - t0
            svc.m_requests.inc(tags={"route": route, "status": str(response.status_code)})
            svc.m_latency.observe(dt, tags={"route": route})
            log.info("http", extra={"route": route, "status": response.status_code,
                                    "latency_ms": round(dt * 1e3, 2)})
        return response

    async def run(coro_fn):
        try:
            return await coro_fn()
        except Exception as e:  # noqa: BLE001 -- mapped to a status, never a hang or bare 500
            err = map_exception(e, svc.cfg.retry_after_s)
            return _json({"detail": err.detail, "request_id": _request_id()}, err.status,
                         err.headers)

    @api.post("/v1/embed", response_model=EmbedResponse)
    async def embed(req: EmbedRequest) -> Response:
        """One embedding per input sequence, in input order."""
        async def go():
            svc.check_model(req.model)
            check_sequences(req.sequences, limits, await svc.max_length())
            seqs = svc.normalise(req.sequences)
            svc.m_sequences.inc(len(seqs), tags={"route": "/v1/embed"})
            out = await svc.embedder.embed.remote(seqs, req.pooling, req.layer)
            dt = np.float16 if req.dtype == "float16" else np.float32
            embs = (out.astype(dt).tolist() if req.pooling == "mean"
                    else [a.astype(dt).tolist() for a in out])
            return _json({"model": svc.name, "dim": (await svc.info())["d_model"],
                          "pooling": req.pooling, "embeddings": embs})
        return await run(go)

    @api.post("/v1/generate", response_model=GenerateResponse)
    async def generate(req: GenerateRequest) -> Response:
        """``Ankh.generate``: per input, ``num_return_sequences`` decoded strings."""
        async def go():
            svc.check_model(req.model)
            gen = svc.need_generator()
            check_sequences(req.sequences, limits, await svc.max_length())
            check_generate(req, limits)
            kw = req.model_dump(exclude={"sequences", "model"})
            outs = await gen.generate.remote(svc.normalise(req.sequences, sentinels=True), **kw)
            return _json({"model": svc.name, "outputs": outs})
        return await run(go)

    @api.post("/v1/variants")
    async def variants(req: VariantsRequest) -> Response:
        """``Ankh.variants``: ``n`` full-length variants of ``parent`` by infilling."""
        async def go():
            svc.check_model(req.model)
            gen = svc.need_generator()
            check_variants(req, limits, await svc.max_length())
            kw = req.model_dump(exclude={"parent", "model"})
            out = await gen.variants.remote(svc.normalise([req.parent])[0], **kw)
            return _json({"model": svc.name, **out})
        return await run(go)

    @api.post("/v1/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest) -> Response:
        """Log-likelihood / pseudo-log-likelihood per sequence; mutation scores vs wild type."""
        async def go():
            svc.check_model(req.model)
            gen = svc.need_generator()
            check_score(req, limits, await svc.max_length())
            seqs = svc.normalise(req.sequences) if req.sequences else None
            wt = svc.normalise([req.wild_type])[0] if req.wild_type else None
            out = await gen.score.remote(seqs, req.per_residue, wt, req.mutants)
            return _json({"model": svc.name, **out})
        return await run(go)

    @api.get("/healthz")
    async def healthz() -> Response:
        """200 when every deployment answers within 5 s, else 503."""
        async def go():
            checks = [svc.embedder.health.remote()]
            if svc.generator is not None:
                checks.append(svc.generator.health.remote())
            try:
                await asyncio.wait_for(asyncio.gather(*checks), timeout=5)
            except asyncio.TimeoutError:
                raise HTTPError(503, "a deployment did not answer the health check in 5 s",
                                {"Retry-After": "1"}) from None
            return _json({"status": "ok", "model": svc.name})
        return await run(go)

    @api.get("/v1/models")
    async def models() -> Response:
        """The served model(s) and their limits."""
        async def go():
            info = await svc.info()
            return _json({"object": "list", "data": [{
                "id": svc.name, **info, "generation": svc.generator is not None,
                "limits": to_plain(limits) | {"max_length": await svc.max_length()}}]})
        return await run(go)

    return api


def openapi_schema() -> dict[str, Any]:
    """The HTTP API's OpenAPI schema, without starting anything."""
    return build_api(None).openapi()


def deployment_options(opts, retry_after_s: float) -> dict[str, Any]:
    """Our DeploymentOptions -> Serve ``.options(...)`` kwargs."""
    from ray.serve.config import BackpressureConfig

    out: dict[str, Any] = {
        "max_ongoing_requests": opts.max_ongoing_requests,
        "max_queued_requests": opts.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=retry_after_s),
        "ray_actor_options": {"num_cpus": opts.num_cpus},
    }
    if opts.autoscaling:
        out["autoscaling_config"] = dict(opts.autoscaling)
    else:
        out["num_replicas"] = opts.num_replicas
    return out


IngressDeployment = serve.deployment(serve.ingress()(Ingress), name="AnkhIngress")


def build_app(args: dict[str, Any] | ServeConfig | None = None) -> serve.Application:
    """Serve application builder: ``args`` is a (partial) :class:`ServeConfig` mapping."""
    cfg = args if isinstance(args, ServeConfig) else from_dict(ServeConfig, dict(args or {}))
    log_cfg = {"encoding": "JSON" if cfg.log_json else "TEXT", "log_level": "INFO"}
    ra = cfg.retry_after_s
    embedder = Embedder.options(**deployment_options(cfg.embed, ra), logging_config=log_cfg).bind(
        cfg.checkpoint, cfg.dtype, to_plain(cfg.embed))
    generator = None
    if cfg.generate.enabled:
        generator = Generator.options(**deployment_options(cfg.generate, ra),
                                      logging_config=log_cfg).bind(cfg.checkpoint, cfg.dtype)
    return IngressDeployment.options(**deployment_options(cfg.ingress, ra),
                                     logging_config=log_cfg).bind(embedder, generator, to_plain(cfg))


# For `serve build ankh_platform.serve_app:app`: the checkpoint comes from $ANKH_CHECKPOINT
# (default: the tiny preset); edit the generated YAML or use build_app with args instead.
app = build_app({"checkpoint": os.environ.get("ANKH_CHECKPOINT", "tiny")})
