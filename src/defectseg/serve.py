"""`defectseg serve`: an HTTP inspection service around one loaded Predictor (FastAPI, run by uvicorn).

Endpoints (docs/service.md has examples):
- `GET /health`: model name, checkpoint checksum, backend, device, threshold (no API key needed).
- `POST /inspect`: multipart field `image` (one or more files) -> per image the verdict, the defect records
  `{x1, y1, x2, y2, area, score, class}` (the records `predict` writes, through the same post-processing),
  width, height, timings and an `id`; query `threshold`, `min_area`, `mask=png`, `overlay=png` (base64 PNGs).
- `GET /results/{id}`: the post-processing again on a recent image's stored probability map with another
  `threshold`/`min_area` (the page's slider): no network run.
- `GET /metrics`: Prometheus text format. `GET /`: the page (served from the package, no CDN).

Concurrent requests are batched for the network (`Batcher`): the first waiting image opens a batch that takes
more images for up to `max_wait_ms` or until `max_batch`; one thread runs the network, post-processing runs in
the request's worker thread. Bad input is a 4xx with a message, never a 500: a request fails alone.
Binding to anything but loopback needs an API key (`X-API-Key: KEY` or `Authorization: Bearer KEY`, compared in
constant time) on every endpoint but `/health` and the page itself; no endpoint reads or writes a path a client gives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import queue
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from .data.io import ImageTooLarge, decode_image
from .localize import PostProcess
from .predictor import Predictor, Result
from .runtime import pick_device
from .viz import overlay

LOOPBACK = ("127.0.0.1", "::1", "localhost")
API_KEY_ENV = "DEFECTSEG_API_KEY"
# Paths anyone may GET: the health probe a load balancer calls, and the page (it holds no data; it asks for the key).
_OPEN_PATHS = ("/health", "/", "/favicon.ico")
# the endpoints /metrics counts by name; any other path counts as "other" (a client must not add series at will)
_ROUTES = ("/health", "/inspect", "/metrics", "/", "/favicon.ico")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class ServeConfig:
    max_batch: int = 8  # images per network call, across requests
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_body_mb: float = 64.0  # larger request bodies get 413
    max_images: int = 16  # images per request
    max_pixels: int = 0  # per image; 0: data.io.max_pixels() (DEFECTSEG_MAX_PIXELS, default 150 M)
    cache: int = 64  # probability maps kept for GET /results/{id}
    api_key: str | None = None
    # Host header names a request may carry (any port); None: any. `serve` on loopback allows only loopback names,
    # so a web page elsewhere cannot reach the service through a name it resolves to 127.0.0.1 (DNS rebinding).
    allowed_hosts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:  # a bad value fails where the config is made, before a model is loaded
        for name in ("max_batch", "max_images", "cache"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name, low, strict in (("max_wait_ms", 0, False), ("max_body_mb", 0, True), ("max_pixels", 0, False)):
            v = getattr(self, name)
            if not math.isfinite(v) or v < low or (strict and v == low):
                at_least = ">" if strict else ">="
                raise ValueError(f"--{name.replace('_', '-')} must be a number {at_least} {low}, got {v}")
        if self.api_key is not None and not (self.api_key.isascii() and self.api_key.isprintable() and self.api_key):
            raise ValueError(
                "the API key must be printable ASCII (HTTP headers carry ASCII, so any other key could never match)"
            )


class Batcher:
    """One thread runs the network on batches gathered from concurrent requests (see the module docstring)."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_s: float) -> None:
        self.predictor, self.max_batch, self.max_wait_s = predictor, max_batch, max_wait_s
        self.queue: Any = queue.Queue()
        self.batches = self.images = 0
        self._thread = threading.Thread(target=self._run, name="defectseg-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray) -> Future:
        """Future of (prob, gate_probability) for one decoded image (`Predictor.probability_maps`)."""
        fut: Future = Future()
        self.queue.put((image, fut))
        return fut

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, deadline = [first], time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._process(batch)

    def _process(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            pairs = self.predictor.probability_maps([image for image, _ in batch])
        except Exception:  # noqa: BLE001 - one bad image must not fail the others: run them one by one
            for image, fut in batch:
                try:
                    fut.set_result(self.predictor.probability_maps([image])[0])
                except Exception as exc:  # noqa: BLE001 - handed to the request that sent it
                    fut.set_exception(exc)
        else:
            for (_, fut), pair in zip(batch, pairs):
                fut.set_result(pair)
        self.batches += 1
        self.images += len(batch)


class Metrics:
    """Counters and a latency histogram in Prometheus text format (no client library needed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.verdicts = {"OK": 0, "NG": 0}
        self.buckets = [0] * len(_LATENCY_BUCKETS)
        self.latency_sum, self.latency_count = 0.0, 0

    def request(self, path: str, code: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, code)] = self.requests.get((path, code), 0) + 1
            if path == "/inspect" and code == 200:
                self.latency_sum += seconds
                self.latency_count += 1
                for i, b in enumerate(_LATENCY_BUCKETS):
                    self.buckets[i] += seconds <= b

    def verdict(self, v: str) -> None:
        with self.lock:
            self.verdicts[v] = self.verdicts.get(v, 0) + 1

    def text(self, batcher: Batcher) -> str:
        with self.lock:
            lines = [
                "# HELP defectseg_requests_total HTTP requests by endpoint and status code.",
                "# TYPE defectseg_requests_total counter",
            ]
            lines += [
                f'defectseg_requests_total{{endpoint="{_label(p)}",code="{c}"}} {n}'
                for (p, c), n in sorted(self.requests.items())
            ]
            errors = sum(n for (_, c), n in self.requests.items() if c >= 400)
            lines += [
                "# HELP defectseg_request_errors_total Requests answered with a 4xx or 5xx status.",
                "# TYPE defectseg_request_errors_total counter",
                f"defectseg_request_errors_total {errors}",
                "# HELP defectseg_inspect_seconds Latency of successful POST /inspect requests.",
                "# TYPE defectseg_inspect_seconds histogram",
            ]
            lines += [
                f'defectseg_inspect_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(_LATENCY_BUCKETS, self.buckets)
            ]
            lines += [
                f'defectseg_inspect_seconds_bucket{{le="+Inf"}} {self.latency_count}',
                f"defectseg_inspect_seconds_sum {self.latency_sum:.6f}",
                f"defectseg_inspect_seconds_count {self.latency_count}",
                "# HELP defectseg_images_total Inspected images by verdict.",
                "# TYPE defectseg_images_total counter",
            ]
            lines += [f'defectseg_images_total{{verdict="{_label(v)}"}} {n}' for v, n in sorted(self.verdicts.items())]
        lines += [
            "# HELP defectseg_batches_total Network calls (each a batch of images from one or more requests).",
            "# TYPE defectseg_batches_total counter",
            f"defectseg_batches_total {batcher.batches}",
            "# HELP defectseg_batched_images_total Images through the network.",
            "# TYPE defectseg_batched_images_total counter",
            f"defectseg_batched_images_total {batcher.images}",
        ]
        return "\n".join(lines) + "\n"


class _BodyTooLarge(Exception):
    pass


class _Limits:
    """ASGI middleware: request body size (413, also for chunked bodies without Content-Length), the API key,
    and the metrics of every request."""

    def __init__(
        self, app: Any, max_body: int, api_key: str | None, metrics: Metrics, allowed_hosts: tuple[str, ...] | None
    ) -> None:
        self.app, self.max_body, self.api_key, self.metrics = app, max_body, api_key, metrics
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, path = time.perf_counter(), scope["path"]
        route = "/results" if path.startswith("/results/") else path if path in _ROUTES else "other"
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = None
        if self.allowed_hosts is not None and _host_name(headers.get("host", "")).lower() not in self.allowed_hosts:
            refusal = JSONResponse(
                {
                    "detail": f"Host {headers.get('host', '')!r} is not one this server answers to; start it with "
                    "--allowed-host NAME to add a name"
                },
                status_code=421,
            )
        elif self.api_key is not None and path not in _OPEN_PATHS and not _key_ok(headers, self.api_key):
            refusal = JSONResponse(
                {"detail": "missing or wrong API key: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'"},
                status_code=401,
            )
        elif headers.get("content-length", "").isdigit() and int(headers["content-length"]) > self.max_body:
            refusal = _too_large(self.max_body)
        if refusal is not None:
            await refusal(scope, receive, send_wrapper)
        else:
            received = 0

            async def counting_receive() -> dict:
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge()
                return message

            await self.app(scope, counting_receive, send_wrapper)  # /inspect answers 413 on _BodyTooLarge
        self.metrics.request(route, status["code"], time.perf_counter() - t0)


def _host_name(host: str) -> str:
    """The name of a Host header without its port: "127.0.0.1:8000" -> "127.0.0.1", "[::1]:80" -> "::1"."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _label(value: object) -> str:
    """A Prometheus label value, escaped (backslash, double quote, newline)."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _too_large_text(limit: int) -> str:
    return (
        f"request body over the limit of {limit / 2**20:g} MiB; send fewer or smaller images (or start the "
        "server with a larger --max-body-mb)"
    )


def _too_large(limit: int) -> Any:
    return JSONResponse({"detail": _too_large_text(limit)}, status_code=413)


def _key_ok(headers: dict[str, str], key: str) -> bool:
    given = headers.get("x-api-key") or ""
    auth = headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return hmac.compare_digest(given.encode("utf-8"), key.encode("utf-8"))


def _png_b64(a: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", a[:, :, ::-1] if a.ndim == 3 else a, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok, "PNG encoding of a uint8 array does not fail"
    return base64.b64encode(buf.tobytes()).decode("ascii")


def file_checksum(path: str | Path) -> str:
    """sha256 of a file, hex (what /health reports, to tell deployed models apart)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def create_app(predictor: Predictor, cfg: ServeConfig | None = None, checksum: str = "", device: str = "cpu") -> Any:
    """The ASGI app around `predictor` (its batch size becomes cfg.max_batch); `checksum` and `device` are what
    /health reports."""
    cfg = cfg or ServeConfig()
    predictor.batch_size = cfg.max_batch
    batcher = Batcher(predictor, cfg.max_batch, cfg.max_wait_ms / 1000)
    metrics = Metrics()
    cache: OrderedDict[str, tuple[np.ndarray, np.ndarray | None, float | None, str]] = OrderedDict()
    cache_lock = threading.Lock()
    net = predictor.segmenter

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        batcher.close()

    app = FastAPI(title="defectseg", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.batcher, app.state.metrics = batcher, metrics

    def post_for(threshold: float | None, min_area: int | None) -> PostProcess:
        if threshold is None and min_area is None:
            return predictor.post
        try:  # the one checked override of the post-processing, as predict and evaluate use it
            return PostProcess.from_config(predictor.infer.overridden(threshold=threshold, min_area=min_area))
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    def record(r: Result, key: str, name: str, want_mask: bool, want_overlay: bool) -> dict[str, Any]:
        j = r.to_json()  # the record predict writes, without the path and the timing
        rec = {
            "id": key,
            "name": name,
            **{k: j[k] for k in ("verdict", "score", "defects", "width", "height", "gate_probability")},
        }
        if want_mask:
            rec["mask_png"] = _png_b64(r.mask_image())
        if want_overlay:
            rec["overlay_png"] = _png_b64(overlay(r.image, r.mask, r.defects))
        return rec

    def check_format(name: str, value: str | None) -> bool:
        if value not in (None, "png"):
            raise HTTPException(422, f"{name}={value!r}: the only format is png ({name}=png)")
        return value == "png"

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": net.config.model.name,
            "checksum": checksum,
            "backend": net.backend,
            "device": device,
            "threshold": predictor.infer.threshold,
            "min_area": predictor.infer.min_area,
            "mode": predictor.mode,
            "classes": net.class_names,
            "max_batch": cfg.max_batch,
        }

    @app.post("/inspect")
    async def inspect(
        request: Request,
        threshold: float | None = None,
        min_area: int | None = None,
        mask: str | None = None,
        overlay: str | None = None,
    ) -> Any:
        t0 = time.perf_counter()
        want_mask, want_overlay = check_format("mask", mask), check_format("overlay", overlay)
        post = post_for(threshold, min_area)
        try:
            form = await request.form(max_files=cfg.max_images, max_fields=cfg.max_images + 8)
        except _BodyTooLarge:
            raise HTTPException(413, _too_large_text(int(cfg.max_body_mb * 2**20))) from None
        except Exception as exc:  # noqa: BLE001 - any malformed body is the client's error
            raise HTTPException(
                400,
                f"cannot read the request body as multipart/form-data ({exc}); send the "
                "images as multipart field 'image'",
            ) from None
        names, images = [], []
        try:  # the uploads are spooled to temporary files until the form is closed
            uploads = [u for u in form.getlist("image") if hasattr(u, "read")]
            if not uploads:
                raise HTTPException(
                    400, "no image: send one or more files as multipart field 'image' (curl -F image=@part.png ...)"
                )
            for i, u in enumerate(uploads):
                name = Path(u.filename or f"image{i}").name  # a name for messages only, never a path on disk
                data = await u.read()
                try:
                    images.append(await run_in_threadpool(decode_image, data, name, cfg.max_pixels or None))
                except ImageTooLarge as exc:
                    raise HTTPException(413, str(exc)) from None
                except ValueError as exc:
                    raise HTTPException(400, str(exc)) from None
                names.append(name)
        finally:
            await form.close()
        t_decoded = time.perf_counter()
        try:
            pairs = await asyncio.gather(*(asyncio.wrap_future(batcher.submit(im)) for im in images))
        except Exception as exc:  # noqa: BLE001 - the network failed on this request's images (a server fault)
            raise HTTPException(500, f"inspection failed: {type(exc).__name__}: {exc}") from None
        t_inferred = time.perf_counter()

        def finish() -> list[dict[str, Any]]:
            out = []
            for name, image, (prob, gate_p) in zip(names, images, pairs):
                r = predictor.result(image, prob, gate_p, name, post)
                key = uuid.uuid4().hex
                with cache_lock:
                    cache[key] = (image, prob, gate_p, name)
                    while len(cache) > cfg.cache:
                        cache.popitem(last=False)
                metrics.verdict(r.verdict)
                out.append(record(r, key, name, want_mask, want_overlay))
            return out

        records = await run_in_threadpool(finish)
        t_done = time.perf_counter()
        ms = {
            "decode": round(1000 * (t_decoded - t0), 2),
            "network": round(1000 * (t_inferred - t_decoded), 2),
            "post": round(1000 * (t_done - t_inferred), 2),
            "total": round(1000 * (t_done - t0), 2),
        }
        body: dict[str, Any] = {
            "images": records,
            "verdict": "NG" if any(r["verdict"] == "NG" for r in records) else "OK",
            "ms": ms,
        }
        if len(records) == 1:  # one image: its record is also the top level
            body = {**records[0], "images": records, "ms": ms}
        return JSONResponse(body)

    @app.get("/results/{key}")
    def again(
        key: str,
        threshold: float | None = None,
        min_area: int | None = None,
        mask: str | None = None,
        overlay: str | None = None,
    ) -> Any:
        want_mask, want_overlay = check_format("mask", mask), check_format("overlay", overlay)
        with cache_lock:
            hit = cache.get(key)
        if hit is None:
            raise HTTPException(
                404,
                f"no stored result {key!r}: only the last {cfg.cache} images are kept; "
                "POST the image to /inspect again",
            )
        image, prob, gate_p, name = hit
        r = predictor.result(image, prob, gate_p, name, post_for(threshold, min_area))
        return record(r, key, name, want_mask, want_overlay)

    @app.get("/metrics")
    def prometheus() -> Any:
        return PlainTextResponse(metrics.text(batcher), media_type="text/plain; version=0.0.4")

    @app.get("/")
    def page() -> Any:
        return HTMLResponse(resources.files("defectseg").joinpath("page.html").read_text(encoding="utf-8"))

    app_with_limits = _Limits(app, int(cfg.max_body_mb * 2**20), cfg.api_key, metrics, cfg.allowed_hosts)
    app_with_limits.state = app.state  # type: ignore[attr-defined]
    app_with_limits.fastapi = app  # type: ignore[attr-defined]
    return app_with_limits


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve beyond loopback without an API key."""
    if host not in LOOPBACK and not api_key:
        raise ValueError(
            f"--host {host} exposes the service beyond this machine: set an API key with --api-key "
            f"or the environment variable {API_KEY_ENV} (or bind to 127.0.0.1)"
        )


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    cfg: ServeConfig | None = None,
    device: str = "auto",
    backend: str = "auto",
    tile: int | None = None,
    threads: int | None = None,
    log_level: str = "info",
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Load the checkpoint and run the service until interrupted. allowed_hosts: Host names besides loopback's
    that a loopback server answers to (a server bound elsewhere answers to any)."""
    check_bind(host, api_key)
    if not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port; use 1 to 65535")
    hosts = (*LOOPBACK, *(h.lower() for h in allowed_hosts)) if host in LOOPBACK else None
    cfg = replace(cfg or ServeConfig(), api_key=api_key, allowed_hosts=hosts)
    predictor = Predictor.from_checkpoint(
        checkpoint, device=device, backend=backend, tile=tile, threads=threads, batch_size=cfg.max_batch
    )
    on = "cpu" if predictor.segmenter.backend == "onnxruntime" else str(pick_device(device))
    app = create_app(predictor, cfg, checksum=file_checksum(checkpoint), device=on)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")
