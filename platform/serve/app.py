"""The Serve application: HTTP ingress over the embedding and generation deployments.

    serve run ankh_platform.serve.app:build_app checkpoint=/path/to/hf_dir
    serve deploy cluster/serve-cluster.yaml          # import_path + args, auth on
    serve build ankh_platform.serve.app:app -o cfg.yaml

Routes (``platform/serve/http.py``): ``POST /v1/embed``, ``/v1/generate``, ``/v1/variants``,
``/v1/score``, ``/v1/search`` (``search.py``), ``/v1/predict`` (``predict.py``), ``GET /healthz``, ``/v1/models``, ``/docs``, ``/openapi.json``; OpenAI-compatible
``POST /v1/embeddings`` (``openai_api.py``); TEI-compatible ``POST /embed``, ``/embed_all``,
``/``, ``GET /info`` (``tei_api.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import Response
from ray import serve
from ray.serve import metrics
from ray.serve.handle import DeploymentHandle

from ankh_platform.core.config import from_dict
from ankh_platform.serve.embed import EmbedDeployment
from ankh_platform.serve.formats import LENGTHS_HEADER, NPY, b64_array, npy_body
from ankh_platform.serve.generate import Generator
from ankh_platform.serve.http import HTTPError, build_api
from ankh_platform.serve.predict import PredictRequest, check_tasks
from ankh_platform.serve.predict import deployment as predict_deployment
from ankh_platform.serve.predict import predict as predict_op
from ankh_platform.serve.predict import task_info as predict_task_info
from ankh_platform.serve.schema import (
    EmbedRequest,
    GenerateRequest,
    ScoreRequest,
    ServeConfig,
    UnknownModelError,
    VariantsRequest,
    check_generate,
    check_score,
    check_sequences,
    check_variants,
    effective_max_length,
    to_plain,
)
from ankh_platform.serve.search import SearchDeployment, SearchRequest, check_indexes
from ankh_platform.serve.search import search as search_op

log = logging.getLogger("ray.serve")


class Ingress:
    """Validates and limits requests, then calls the model deployments through handles
    (the ``http.Service`` the routes of ``http.build_api`` call)."""

    def __init__(
        self,
        embedder: DeploymentHandle,
        generator: DeploymentHandle | None,
        config: dict[str, Any],
        searcher: DeploymentHandle | None = None,
        predictor: DeploymentHandle | None = None,
    ):
        self.cfg = from_dict(ServeConfig, config)
        self.limits = self.cfg.limits
        self.embedder, self.generator, self.searcher = embedder, generator, searcher
        self.predictor = predictor
        self.index_facts = check_indexes(self.cfg) if searcher is not None else {}
        self.task_facts = check_tasks(self.cfg) if predictor is not None else {}
        self._task_info: dict[str, dict[str, Any]] = {}  # per task: max length, tokenizer
        self.name = self.cfg.served_name()  # the default model
        self.catalog = self.cfg.catalog()  # {name: checkpoint}, the default first
        self.token = None
        self.created = int(time.time())  # /v1/models "created" (OpenAI's Model object)
        if self.cfg.auth.enabled:
            self.token = os.environ.get(self.cfg.auth.token_env, "")
            if not self.token:
                raise RuntimeError(
                    f"auth.enabled but ${self.cfg.auth.token_env} is empty: set it "
                    "(e.g. from a secret) or disable auth"
                )
        self._info: dict[str, dict[str, Any]] = {}  # per model, from an embedder replica
        self._tok: dict[str, Any] = {}  # per model: AnkhTokenizer
        self._routes: dict[tuple[int, str], DeploymentHandle] = {}
        self.facts: dict[str, Any] | None = None  # the default model's, for /openapi.json
        self.m_requests = metrics.Counter(
            "ankh_http_requests", description="HTTP requests", tag_keys=("route", "status")
        )
        self.m_latency = metrics.Histogram(
            "ankh_http_latency_seconds",
            description="Ingress latency per route (s)",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
            tag_keys=("route",),
        )
        self.m_sequences = metrics.Counter(
            "ankh_http_sequences", tag_keys=("route",), description="Sequences received per route"
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Metrics + one structured log line per request (Serve adds the request id)."""
        self.m_requests.inc(tags={"route": route, "status": str(status)})
        self.m_latency.observe(seconds, tags={"route": route})
        log.info(
            "http", extra={"route": route, "status": status, "latency_ms": round(seconds * 1e3, 2)}
        )

    # ---- helpers ---------------------------------------------------------------------------
    def model_id(self, requested: str | None) -> str:
        """The request's model: JSON ``model``, else the ``serve_multiplexed_model_id`` header,
        else the default; 404 (listing the served ones) for a name this app does not serve."""
        header = serve.get_multiplexed_model_id()  # set by Serve's proxy from the HTTP header
        if requested and header and requested != header:
            raise HTTPError(
                422,
                f"'model' {requested!r} and header serve_multiplexed_model_id {header!r} disagree",
            )
        name = requested or header or self.name
        if name not in self.catalog:
            raise UnknownModelError(name, list(self.catalog))
        return name

    def route(self, handle: DeploymentHandle, name: str) -> DeploymentHandle:
        """The default model: the plain handle; another: Serve routes by multiplexed model id."""
        if name == self.name:
            return handle
        key = (id(handle), name)
        if key not in self._routes:
            self._routes[key] = handle.options(multiplexed_model_id=name)
        return self._routes[key]

    async def info(self, name: str) -> dict[str, Any]:
        """Dimensions/buckets of a model (asks an embedder replica, which loads it if needed)."""
        if name not in self._info:
            from ankh.tokenizer import AnkhTokenizer

            info = await self.route(self.embedder, name).info.remote()
            info.pop("id", None)
            self._tok[name] = AnkhTokenizer(info.pop("vocab"))
            self._info[name] = info
        return self._info[name]

    async def checked(self, model: str | None, seqs: list[str]) -> tuple[str, int]:
        """Model name and count/length limits -> (model name, effective max length)."""
        name = self.model_id(model)
        max_len = effective_max_length(self.limits, (await self.info(name))["max_residues"], None)
        check_sequences(seqs, self.limits, max_len)
        return name, max_len

    def normalise(
        self, name: str, seqs: list[str], sentinels: bool = False, tok: Any = None
    ) -> list[str]:
        """Upper case, no whitespace, every letter in the alphabet (else 422 naming it);
        ``tok``: another tokenizer than model ``name``'s (a served task's)."""
        from ankh.tokenizer import TokenizerError

        tok, out = tok or self._tok[name], []
        for i, s in enumerate(seqs):
            norm = tok.normalize(s)
            if not norm:
                raise HTTPError(422, f"sequence {i} is empty")
            if not s.isascii():  # else upper() turns e.g. 'ß' into 'SS', two residues
                p, c = next((p, c) for p, c in enumerate(s) if not c.isascii())
                raise HTTPError(
                    422, f"sequence {i}: character {c!r} at position {p} is not in the alphabet"
                )
            try:
                tok.encode(norm, allow_sentinels=sentinels)
            except TokenizerError as e:
                raise HTTPError(422, f"sequence {i}: {e}") from None
            out.append(norm)
        return out

    def gen(self, name: str) -> DeploymentHandle:
        if self.generator is None:
            raise HTTPError(404, "generation is not enabled in this deployment (generate.enabled)")
        return self.route(self.generator, name)

    # ---- operations (one per route) -----------------------------------------------------------
    async def embed_arrays(
        self,
        model: str | None,
        sequences: list[str],
        pooling: str = "mean",
        layer: int | None = None,
        truncate: str | None = None,
        route: str = "/v1/embed",
    ) -> tuple[str, list[str], Any]:
        """The embedding operation of every embedding route (ours, OpenAI's, TEI's): model,
        limits, normalisation -> (model name, normalised sequences, the embedder's arrays).
        ``truncate`` "left"/"right" cuts over-long sequences to the limit (TEI) instead of 413."""
        if truncate:
            name, max_len = await self.checked(model, [])
            cut = [("".join(s.split())) for s in sequences]
            sequences = [s[-max_len:] if truncate == "left" else s[:max_len] for s in cut]
        name, _ = await self.checked(model, sequences)
        seqs = self.normalise(name, sequences)
        self.m_sequences.inc(len(seqs), tags={"route": route})
        out = await self.route(self.embedder, name).embed.remote(seqs, pooling, layer)
        return name, seqs, out

    async def embed(self, req: EmbedRequest, npy: bool = False) -> dict[str, Any] | Response:
        name, _, out = await self.embed_arrays(req.model, req.sequences, req.pooling, req.layer)
        if npy:  # Accept: application/x-npy
            body, lengths = npy_body(out, req.dtype)
            return Response(
                body,
                media_type=NPY,
                headers={LENGTHS_HEADER: ",".join(map(str, lengths)), "X-Model": name},
            )
        if req.encoding_format == "base64":
            embs: list[Any] = [b64_array(a, req.dtype) for a in out]
        else:
            dt = np.float16 if req.dtype == "float16" else np.float32
            embs = (
                out.astype(dt).tolist()
                if req.pooling == "mean"
                else [a.astype(dt).tolist() for a in out]
            )
        return {
            "model": name,
            "dim": self._info[name]["d_model"],
            "pooling": req.pooling,
            "encoding_format": req.encoding_format,
            "embeddings": embs,
        }

    async def describe(self, model: str | None) -> dict[str, Any]:
        """One served model's facts (dims, buckets, effective max length) for /info-like routes."""
        name = self.model_id(model)
        info = await self.info(name)
        return {
            "id": name,
            **info,
            "max_length": effective_max_length(self.limits, info["max_residues"], None),
        }

    async def schema_facts(self) -> dict[str, Any]:
        """What the OpenAPI schema states about the default model (``openapi.constrain``)."""
        if self.facts is None:
            d = await self.describe(None)
            tok = self._tok[self.name]
            self.facts = {k: d[k] for k in ("max_length", "layers", "per_residue", "d_model")}
            self.facts |= {
                "letters": tok.residue_letters,
                "sentinels": sum(t.startswith("<extra_id_") for t in tok.vocab),
                "indexes": {n: f["dim"] for n, f in self.index_facts.items()},
                "tasks": list(self.task_facts),
            }
            if self.task_facts:  # the first task's served maximum (others: a 413 names theirs)
                first = next(iter(self.task_facts))
                info = await predict_task_info(self, self.predictor, first)
                self.facts["predict_max_length"] = info["max_residues"]
        return self.facts

    async def generate(self, req: GenerateRequest) -> dict[str, Any]:
        name, _ = await self.checked(req.model, req.sequences)
        gen = self.gen(name)
        settings = check_generate(req, self.limits)
        self.m_sequences.inc(len(req.sequences), tags={"route": "/v1/generate"})
        seqs = self.normalise(name, req.sequences, sentinels=True)
        outs = await gen.generate.remote(seqs, generation_config=settings)
        return {"model": name, "outputs": outs}

    async def variants(self, req: VariantsRequest) -> dict[str, Any]:
        name, max_len = await self.checked(req.model, [req.parent])
        gen = self.gen(name)
        settings = check_variants(req, self.limits, max_len)
        kw = req.model_dump(include={"n", "mask_fraction", "spans", "same_length"})
        parent = self.normalise(name, [req.parent])[0]
        out = await gen.variants.remote(parent, generation_config=settings, **kw)
        return {"model": name, **out}

    async def score(self, req: ScoreRequest) -> dict[str, Any]:
        name, max_len = await self.checked(req.model, [])
        gen = self.gen(name)
        check_score(req, self.limits, max_len)
        seqs = self.normalise(name, req.sequences) if req.sequences else None
        wt = self.normalise(name, [req.wild_type])[0] if req.wild_type else None
        out = await gen.score.remote(seqs, req.per_residue, wt, req.mutants)
        return {"model": name, **out}

    async def search(self, req: SearchRequest) -> dict[str, Any]:
        return await search_op(self, req)

    async def predict(self, req: PredictRequest) -> dict[str, Any]:
        return await predict_op(self, req)

    async def health(self) -> dict[str, Any]:
        checks = [self.embedder.health.remote()]
        for extra in (self.generator, self.searcher, self.predictor):
            if extra is not None:
                checks.append(extra.health.remote())
        try:
            await asyncio.wait_for(asyncio.gather(*checks), timeout=5)
        except TimeoutError:
            raise HTTPError(
                503, "a deployment did not answer the health check in 5 s", {"Retry-After": "1"}
            ) from None
        return {"status": "ok", "model": self.name}

    async def models(self) -> dict[str, Any]:
        """Every served model. Dimensions of a non-default model appear once it has been used
        (asking for them would load it, evicting another)."""
        await self.info(self.name)
        data = []
        for name, ckpt in self.catalog.items():
            info = self._info.get(name)
            entry: dict[str, Any] = {
                "id": name,
                "object": "model",
                "created": self.created,
                "owned_by": "ankh",
                "checkpoint": ckpt,
                "default": name == self.name,
                "generation": self.generator is not None,
                "details": info is not None,
            }
            limits = to_plain(self.limits)
            if info is not None:
                entry |= info
                limits["max_length"] = effective_max_length(self.limits, info["max_residues"], None)
            data.append(entry | {"limits": limits})
        return {
            "object": "list",
            "data": data,
            "max_models_per_replica": self.cfg.max_models_per_replica,
            "tasks": [{"id": n, **f} for n, f in self.task_facts.items()],  # /v1/predict
        }


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
    mux = {
        "models": dict(cfg.models),
        "default_name": cfg.served_name(),
        "max_models": cfg.max_models_per_replica,
    }  # several checkpoints per replica
    embedder = EmbedDeployment.options(
        **deployment_options(cfg.embed, ra), logging_config=log_cfg
    ).bind(cfg.checkpoint, cfg.dtype, to_plain(cfg.embed), **mux)
    generator = None
    if cfg.generate.enabled:
        generator = Generator.options(
            **deployment_options(cfg.generate, ra), logging_config=log_cfg
        ).bind(cfg.checkpoint, cfg.dtype, cfg.generate.warmup, **mux)
    searcher = None
    if cfg.indexes:  # refused here, before anything starts, if a model or layer is not served
        check_indexes(cfg)
        searcher = SearchDeployment.options(
            **deployment_options(cfg.search, ra), logging_config=log_cfg
        ).bind(dict(cfg.indexes), cfg.search_shards)
    predictor = None
    if cfg.tasks:  # refused here, before anything starts, if a run is unreadable
        predictor = predict_deployment(
            cfg, deployment_options(cfg.predict, ra) | {"logging_config": log_cfg}
        )
    return IngressDeployment.options(
        **deployment_options(cfg.ingress, ra), logging_config=log_cfg
    ).bind(embedder, generator, to_plain(cfg), searcher, predictor)


# For `serve build ankh_platform.serve.app:app`: the checkpoint comes from $ANKH_CHECKPOINT
# (default: the tiny preset); edit the generated YAML or use build_app with args instead.
app = build_app({"checkpoint": os.environ.get("ANKH_CHECKPOINT", "tiny")})
