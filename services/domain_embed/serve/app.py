"""The NIM-compatible HTTP API: routes only. Limits, errors, metrics and the Triton client live in
their own modules (limits.py, errors.py, metrics.py, triton_client.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response

from .. import __version__
from . import errors
from .errors import BadRequest, ModelNotFound, TritonUnavailable, Unauthorized
from .limits import BodyLimitMiddleware, BoundedQueue
from .metrics import GatewayMetrics
from .settings import ServeSettings
from .triton_client import TritonEmbedder

WARMUP_TEXT = "readiness probe"
API_VERSION = "1.0.0"   # the semver of this HTTP API (GET /v1/version); the release is the package's version
HEALTH_PATHS = ("/v1/health/live", "/v1/health/ready")          # always open: the orchestrator's probes
DOCS_PATHS = ("/v1/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")  # serve.protect_metrics_docs
log = logging.getLogger("domain_embed.serve")


class EmbeddingsRequest(BaseModel):
    """POST /v1/embeddings, as NVIDIA's embedding NIM (and the OpenAI API) take it."""

    model_config = ConfigDict(extra="ignore")

    input: Union[str, list[str]] = Field(description="a text or a list of texts")
    model: str = Field(description="the served model name, optionally with a -query or -passage suffix")
    input_type: Optional[Literal["query", "passage"]] = Field(
        None, description="query or passage; required for asymmetric models unless the model name has the suffix")
    truncate: Optional[Literal["NONE", "START", "END"]] = Field(
        None, description="NONE rejects over-length input; START/END drop tokens from that side")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[StrictInt] = Field(
        None, ge=1, description="Matryoshka: keep the first N dims, renormalise; one of the model's supported sizes "
                                "(GET /v1/models)")
    # NIM 2.x fields this server does not offer: refused with a 400 rather than silently ignored
    embedding_type: Optional[str] = Field(None, description="only 'float' (packed int8/binary output is not offered)")
    modality: Optional[Union[str, list[str]]] = Field(None, description="only 'text'")
    user: Optional[str] = None


class Gateway:
    """State shared by the routes: settings, the encoding spec, the Triton client, limits, metrics."""

    def __init__(self, settings: ServeSettings, spec: dict[str, Any], embedder: TritonEmbedder | None = None):
        self.s = settings
        self.spec = spec
        self.dim = int(spec["dim"])
        # A model without prefixes is still asymmetric when queries and passages have different
        # limits: the input type decides how long an input may be before truncate applies.
        self.asymmetric = (spec.get("query_prefix", "") != spec.get("passage_prefix", "")
                           or spec.get("max_query_length") != spec.get("max_passage_length"))
        # the sizes `dimensions` may ask for: those the model was trained for (model.matryoshka_dims) and its
        # own; an export that declares none allows any prefix, as before the field existed
        declared = {int(d) for d in spec.get("matryoshka_dims") or () if 0 < int(d) <= self.dim}
        self.sizes = sorted(declared | {self.dim}) if declared else None
        self.metrics = GatewayMetrics()
        self.embedder = embedder or TritonEmbedder(settings.triton_url, settings.triton_model,
                                                   settings.request_timeout_s, settings.retry_after_s)
        self.queue: BoundedQueue | None = None
        self.ready = False
        self.last_ok = float("-inf")  # time.monotonic() of the last inference that succeeded
        self._probing: asyncio.Task | None = None

    def needs_key(self, path: str) -> bool:
        if self.s.api_key() is None or path in HEALTH_PATHS:
            return False
        return self.s.protect_metrics_docs or path not in DOCS_PATHS

    def check_auth(self, request: Request) -> None:
        key = self.s.api_key()
        if key is None or not self.needs_key(request.url.path):
            return
        got = request.headers.get("authorization", "")
        token = got[7:].strip() if got.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(token.encode(), key.encode()):
            raise Unauthorized("missing or wrong API key; send it as 'Authorization: Bearer <key>'")

    def mark(self, ok: bool) -> None:
        self.ready = ok
        if ok:
            self.last_ok = time.monotonic()
        self.metrics.triton_up.set(1 if ok else 0)

    def resolve_model(self, model: str, input_type: str | None) -> str:
        name, kind = model, None
        for suffix in ("query", "passage"):
            if model.endswith(f"-{suffix}"):
                name, kind = model[: -len(suffix) - 1], suffix
        if name != self.s.served_name:
            raise ModelNotFound(f"model {model!r} is not served here; use {self.s.served_name!r} "
                                f"(or with a -query/-passage suffix); see GET /v1/models")
        if kind and input_type and kind != input_type:
            raise BadRequest(f"the model suffix says {kind!r} but input_type is {input_type!r}; give one of them")
        chosen = input_type or kind
        if chosen is None:
            if self.asymmetric:
                raise BadRequest("input_type is required for this asymmetric model: set input_type to 'query' or "
                                 "'passage', or call the model as "
                                 f"'{self.s.served_name}-query' / '{self.s.served_name}-passage'")
            chosen = "passage"
        return chosen

    async def _probe_once(self) -> bool:
        t = self.s.ready_timeout_s
        try:
            # client_timeout bounds each gRPC call; wait_for bounds the whole probe (config + infer)
            await asyncio.wait_for(self.embedder.embed([WARMUP_TEXT], "query", "END", timeout_s=t), t)
            self.mark(True)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; say which
            log.warning("readiness probe failed within %.1fs: %s", t, getattr(exc, "message", None) or repr(exc))
            self.mark(False)
        return self.ready

    async def probe(self) -> bool:
        """A real inference through Triton, within serve.ready_timeout_s; concurrent callers share one."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self._probe_once())
        return await asyncio.shield(self._probing)

    async def check_ready(self) -> bool:
        """Ready if an inference succeeded within the last ready_timeout_s (so a busy server is not
        probed behind its own queue), else after a fresh probe."""
        if self.ready and time.monotonic() - self.last_ok < self.s.ready_timeout_s:
            return True
        return await self.probe()


def _read_manifest(repository: Path | None) -> dict[str, Any] | None:
    """The model repository's sha256 manifest (triton/checksums.json), read once at start: GET /v1/manifest serves
    it and GET /v1/metadata names the export by its digest, so a caller can tell which export answers."""
    if repository is None:
        return None
    path = Path(repository) / "checksums.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("no model manifest for /v1/manifest (%s: %s)", path, exc)
        return None


def create_app(settings: ServeSettings, spec: dict[str, Any], embedder: TritonEmbedder | None = None,
               repository: Path | None = None) -> FastAPI:
    """``repository``: the Triton model repository the spec came from, for /v1/manifest and the profile id."""
    gw = Gateway(settings, spec, embedder)
    manifest = _read_manifest(repository)
    profile_id = (hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
                  if manifest is not None else "")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gw.queue = BoundedQueue(settings.max_queue, settings.retry_after_s, on_change=gw.metrics.queue_depth.set)
        await gw.probe()
        yield
        # uvicorn has stopped accepting; let what is in flight finish before the channel closes
        await gw.queue.drained(settings.shutdown_grace_s)
        await gw.embedder.close()

    app = FastAPI(title="domain-embed gateway", version="1",
                  description="NIM-compatible text-embedding API in front of Triton", lifespan=lifespan)
    app.state.gateway = gw
    errors.install(app)

    def count(route: str, status: int) -> None:
        gw.metrics.requests.labels(route, str(status)).inc()

    def route_of(scope) -> str:
        """The route template a request matched, so that the counter's label set stays bounded: any other path
        (a scanner's, a typo's, one refused with 401 before routing) counts as "unmatched"."""
        route = scope.get("route")
        if route is not None:
            return getattr(route, "path", "unmatched")
        return scope["path"] if scope.get("path") in known_paths else "unmatched"

    @app.middleware("http")
    async def front(request: Request, call_next):
        """Authentication before anything reads the body, a JSON 500 for any unexpected error,
        and the request counter (every status, 401 and 500 included)."""
        try:
            gw.check_auth(request)
            response = await call_next(request)
        except Unauthorized as exc:
            response = errors.error_response(exc.status, exc.message, exc.kind, exc.headers)
        except Exception as exc:  # noqa: BLE001 - never a plain-text 500
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            # the type only: the exception text may hold internals a caller should not see
            response = errors.error_response(500, f"internal error ({type(exc).__name__}) in the gateway; its log "
                                             f"has the traceback", "internal_error")
        count(route_of(request.scope), response.status_code)
        return response

    @app.post("/v1/embeddings", responses={400: {}, 401: {}, 404: {}, 413: {}, 422: {}, 429: {}, 503: {}})
    async def embeddings(req: EmbeddingsRequest, request: Request) -> Response:
        t0 = time.perf_counter()
        gw.check_auth(request)
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if not texts:
            raise BadRequest("input is empty; send a string or a non-empty list of strings")
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            # as the OpenAI API: an empty string has nothing to embed, and its vector would match everything alike
            shown = ", ".join(map(str, blank[:10])) + (f" and {len(blank) - 10} more" if len(blank) > 10 else "")
            raise BadRequest(f"input {shown} {'is an empty string' if len(blank) == 1 else 'are empty strings'} "
                             f"(or only whitespace); leave out empty texts, or send a placeholder of your own")
        if len(texts) > settings.max_batch_items:
            raise BadRequest(f"input has {len(texts)} items, over the limit of {settings.max_batch_items}; "
                             f"split it into several requests")
        input_type = gw.resolve_model(req.model, req.input_type)
        if req.dimensions is not None and req.dimensions > gw.dim:
            raise BadRequest(f"dimensions={req.dimensions} is more than the model's {gw.dim}")
        if req.dimensions is not None and gw.sizes is not None and req.dimensions not in gw.sizes:
            raise BadRequest(f"dimensions={req.dimensions} is not a size this model supports; use one of "
                             f"{', '.join(map(str, gw.sizes))} (GET /v1/models lists them)")
        if req.embedding_type not in (None, "float"):
            raise BadRequest(f"embedding_type={req.embedding_type!r} is not offered by this server; it returns float "
                             f"embeddings: omit embedding_type or set it to 'float'")
        kinds = {req.modality} if isinstance(req.modality, str) else set(req.modality or ())
        if kinds - {"text"}:
            raise BadRequest(f"modality {sorted(kinds - {'text'})} is not supported: this model embeds text only; "
                             f"omit modality or set it to 'text'")
        truncate = req.truncate or settings.default_truncate
        if not gw.ready and not await gw.probe():
            # known down or hung: answer at once (within ready_timeout_s) instead of holding a slot
            raise TritonUnavailable(f"the inference server is unavailable (not ready: no inference succeeded within "
                                    f"{settings.ready_timeout_s:g}s); retry shortly",
                                    headers={"Retry-After": str(settings.retry_after_s)})
        async with gw.queue.slot():
            try:
                vecs, tokens = await gw.embedder.embed(texts, input_type, truncate)
            except TritonUnavailable:
                gw.mark(False)
                raise
        gw.mark(True)
        if req.dimensions is not None and req.dimensions < vecs.shape[1]:
            vecs = vecs[:, : req.dimensions]
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        vecs = np.ascontiguousarray(vecs, dtype="<f4")
        if req.encoding_format == "base64":
            data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
                    for i, v in enumerate(vecs)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs.tolist())]
        body = {"object": "list", "data": data, "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        gw.metrics.batch.observe(len(texts))
        gw.metrics.tokens.inc(tokens)
        gw.metrics.latency.observe(time.perf_counter() - t0)
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        gw.check_auth(request)
        return {"object": "list", "data": [
            {"id": settings.served_name, "object": "model", "owned_by": "domain-embed", "created": 0,
             "dimensions": gw.dim, "supported_dimensions": gw.sizes or list(range(1, gw.dim + 1)),
             "max_input_tokens": {"query": gw.spec["max_query_length"], "passage": gw.spec["max_passage_length"]}}]}

    @app.get("/v1/version")
    async def version(request: Request) -> dict[str, str]:
        gw.check_auth(request)
        return {"release": __version__, "api": API_VERSION}

    @app.get("/v1/metadata")
    async def metadata(request: Request) -> dict[str, Any]:
        """Runtime and model metadata, in the shape of NIM's: which model, how it encodes, which export."""
        gw.check_auth(request)
        return {"version": __version__, "selectedModelProfileId": profile_id, "repository_override": "",
                "assetInfo": [], "modelInfo": [{
                    "shortName": settings.served_name, "modelUrl": "", "dimensions": gw.dim,
                    "supportedDimensions": gw.sizes or list(range(1, gw.dim + 1)),
                    "maxInputTokens": {"query": gw.spec["max_query_length"],
                                       "passage": gw.spec["max_passage_length"]},
                    "queryPrefix": gw.spec.get("query_prefix", ""),
                    "passagePrefix": gw.spec.get("passage_prefix", ""),
                    "pooling": gw.spec.get("pooling"), "normalize": gw.spec.get("normalize"),
                    "tritonModel": settings.triton_model}]}

    @app.get("/v1/manifest", responses={404: {}})
    async def manifest_route(request: Request) -> Response:
        gw.check_auth(request)
        if manifest is None:
            return errors.error_response(404, "this gateway was started without its model repository, so it has no "
                                         "manifest; start it with --model-repository (or through `domain-embed "
                                         "serve`)", "not_found")
        return Response(json.dumps(manifest), media_type="application/json")

    @app.get("/v1/health/live")
    async def live() -> dict[str, str]:
        return {"object": "health.response", "message": "live"}

    @app.get("/v1/health/ready", responses={503: {}})
    async def ready() -> Response:
        if await gw.check_ready():
            return Response(json.dumps({"object": "health.response", "message": "ready", "ready": True}),
                            media_type="application/json")
        return errors.error_response(503, f"not ready: no inference through Triton succeeded within "
                                     f"{settings.ready_timeout_s:g}s (serve.ready_timeout_s)", "unavailable",
                                     {"Retry-After": str(settings.retry_after_s)})

    @app.get("/v1/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4")

    known_paths = {getattr(r, "path", None) for r in app.routes} - {None}
    # outermost, so an oversized body is refused before anything parses it; its 413s are counted here
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       on_reject=lambda scope: count(route_of(scope), 413))
    return app
