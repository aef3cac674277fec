"""The model server behind ``sketchpipe serve-model``: MLflow's scoring contract, batched, following an alias.

- ``POST /invocations`` answers like ``mlflow models serve`` (request and answer: :mod:`pipeline.pyfunc`);
  a bad sketch is a 400 naming it, a body over ``max_body_bytes`` a 413, and no body is echoed back.
- Requests that arrive together are scored in one model call (dynamic batching: the first request
  waits at most ``max_wait_ms`` for others, up to ``max_batch`` sketches), padded to a multiple of
  ``length_bucket`` points so that batches repeat their shapes. The model runs in a thread of its
  own, never on the event loop, through one graph function traced once for any batch and length.
- Given an alias (``models:/NAME@champion``), a thread asks the registry every ``poll_seconds`` which
  version holds it; when that changes, the new version is loaded and warmed beside the old one, then
  swapped in. Batches already running finish on the version they started with: no request fails.
- ``GET /model`` names what answers (model, version, alias, class count, load time); ``GET /ping``
  and ``GET /health`` answer 200 once a model is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipeline.config import Settings

log = logging.getLogger(__name__)

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[\w-]+)$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """How the server batches, bounds requests and follows its alias."""

    poll_seconds: float = 5.0  # how often the alias is looked up (0: never)
    max_batch: int = 256  # sketches in one model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_body_bytes: int = 8 << 20  # a larger request body is refused (413) unread
    length_bucket: int = 32  # batches are padded to a multiple of this many points


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One loaded version: the classifier, its graph function and what ``GET /model`` says of it."""

    classifier: object
    infer: object
    uri: str
    name: str | None
    version: str | None
    alias: str | None
    loaded_at: float
    load_seconds: float

    def describe(self) -> dict:
        """Return what ``GET /model`` answers."""
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "uri": self.uri,
            "num_classes": len(self.classifier.classes),
            "max_len": self.classifier.max_len,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "load_seconds": round(self.load_seconds, 3),
        }


def padded_length(longest: int, max_len: int, bucket: int) -> int:
    """Return the padded length of a batch whose longest (cropped) sketch has ``longest`` points."""
    return max(1, min(max_len, bucket * math.ceil(longest / bucket)))


def score_batch(model: LoadedModel, sketches: list[np.ndarray], k: int, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``k`` best class indices and their probabilities, best first, per sketch (one model call)."""
    from pipeline.evaluation import top_k_indices
    from pipeline.features import pad_batch
    from pipeline.strokes import drop_noop_points

    max_len = model.classifier.max_len
    cropped = [drop_noop_points(sketch)[:max_len] for sketch in sketches]
    batch = pad_batch(cropped, padded_length(max(len(s) for s in cropped), max_len, bucket))
    probabilities = model.infer(batch).numpy()
    top = top_k_indices(probabilities, k)
    return top, np.take_along_axis(probabilities, top, axis=1)


class ModelHolder:
    """Holds the model that answers, and swaps in a new version when the alias it serves moves."""

    def __init__(self, settings: Settings, model_uri: str, options: ServerOptions):
        self.settings = settings
        self.model_uri = model_uri
        self.options = options
        alias = _ALIAS_URI.match(model_uri)
        self.name, self.alias = (alias["name"], alias["alias"]) if alias else (None, None)
        self.current = self._load(model_uri)
        self._stop = threading.Event()
        self._follower: threading.Thread | None = None

    def _client(self):
        from pipeline import tracking

        return tracking.client_for(self.settings.resolved_tracking_uri)

    def _load(self, uri: str) -> LoadedModel:
        """Load and warm up the version ``uri`` names (an alias is resolved to its version first)."""
        from pipeline.evaluation import compiled_inference
        from pipeline.serving import load_classifier

        started = time.perf_counter()
        name, version, load_uri = None, None, uri
        if self.alias is not None:
            from pipeline import registry

            name, version = self.name, registry.alias_version(self._client(), self.name, self.alias)
            if version is None:
                raise LookupError(f"{self.name} has no version with alias {self.alias}")
            load_uri = f"models:/{name}/{version}"  # the version, so that a move between the two asks is no matter
        elif fixed := _VERSION_URI.match(uri):
            name, version = fixed["name"], fixed["version"]
        classifier = load_classifier(self.settings, load_uri)
        infer = compiled_inference(classifier.model)
        infer(np.zeros((2, 8, 3), np.float32) + np.array([1.0, 1.0, 0.0], np.float32))  # trace before serving
        return LoadedModel(
            classifier, infer, uri, name, version, self.alias, time.time(), time.perf_counter() - started
        )

    def refresh(self) -> bool:
        """Load the alias's version if it moved; return whether the served model changed."""
        if self.alias is None:
            return False
        from pipeline import registry

        version = registry.alias_version(self._client(), self.name, self.alias)
        if version is None or version == self.current.version:
            return False
        loaded = self._load(self.model_uri)
        previous, self.current = self.current, loaded  # one reference swap: running batches keep theirs
        print(f"now serving {self.name} version {loaded.version} @{self.alias} (was {previous.version})", flush=True)
        return True

    def start_following(self) -> None:
        """Start the thread that checks the alias every ``poll_seconds`` (for an alias URI only)."""
        if self.alias is None or self.options.poll_seconds <= 0 or self._follower is not None:
            return
        self._follower = threading.Thread(target=self._follow, name="alias-follower", daemon=True)
        self._follower.start()

    def stop(self) -> None:
        """Stop following the alias."""
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.options.poll_seconds):
            try:
                self.refresh()
            except Exception as exc:  # a store that is briefly away: keep serving what is loaded
                log.warning("could not check %s@%s: %s", self.name, self.alias, exc)


class Batcher:
    """Collects concurrent requests into one model call, run in a thread of its own."""

    def __init__(self, holder: ModelHolder, options: ServerOptions):
        self.holder = holder
        self.options = options
        self._queue: asyncio.Queue | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start collecting (call from the event loop that serves requests)."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop collecting and let the model thread finish."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def score(self, sketches: list[np.ndarray], k: int) -> tuple[LoadedModel, np.ndarray, np.ndarray]:
        """Return the model that answered and the top-``k`` indices and probabilities of each sketch."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((sketches, k, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.options.max_wait_ms / 1000
        while True:
            pending = [await self._queue.get()]
            count = len(pending[0][0])
            deadline = loop.time() + wait
            while count < self.options.max_batch:
                try:
                    item = self._queue.get_nowait()  # what arrived while the last batch ran: no wait
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                pending.append(item)
                count += len(item[0])
            model = self.holder.current
            sketches = [sketch for item in pending for sketch in item[0]]
            k = max(item[1] for item in pending)
            try:
                top, top_p = await loop.run_in_executor(
                    self._executor, score_batch, model, sketches, k, self.options.length_bucket
                )
            except Exception as exc:
                for _, _, future in pending:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for item_sketches, item_k, future in pending:
                end = start + len(item_sketches)
                if not future.done():  # a client that went away
                    future.set_result((model, top[start:end, :item_k], top_p[start:end, :item_k]))
                start = end


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    code = {400: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE", 503: "TEMPORARILY_UNAVAILABLE"}.get(status, "INTERNAL_ERROR")
    return JSONResponse({"error_code": code, "message": message}, status_code=status)


async def _read_body(request, limit: int) -> bytes | None:
    """Return the request body, or ``None`` once it passes ``limit`` bytes (the rest is not read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_request(body: bytes, classifier) -> tuple[list[np.ndarray], int]:
    """Return the checked sketches and ``k`` of a request body.

    Raises:
        StrokeFormatError: what is wrong, naming the sketch (the answer is a 400 with this message).
    """
    from pipeline.pyfunc import DEFAULT_TOP_K, request_sketches
    from pipeline.strokes import StrokeFormatError, stroke3_sketches

    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StrokeFormatError(f"the body is not JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise StrokeFormatError("the body is not JSON (nested too deeply)") from None
    items, k = request_sketches(payload)
    sketches = stroke3_sketches(items)
    classifier.check_range(sketches)
    return sketches, min(k or DEFAULT_TOP_K, len(classifier.classes))


def create_app(holder: ModelHolder, options: ServerOptions):
    """Return the ASGI application serving ``holder``'s model (see the module's docstring)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from pipeline.strokes import StrokeFormatError

    batcher = Batcher(holder, options)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        holder.start_following()
        yield
        holder.stop()
        await batcher.stop()

    async def invocations(request):
        body = await _read_body(request, options.max_body_bytes)
        if body is None:
            return _error(413, f"the request body is larger than {options.max_body_bytes} bytes")
        try:
            sketches, k = parse_request(body, holder.current.classifier)
        except StrokeFormatError as exc:
            return _error(400, str(exc))
        model, top, top_p = await batcher.score(sketches, k)
        classes = model.classifier.classes
        predictions = [
            {
                "class": classes[indices[0]],
                "probability": float(probabilities[0]),
                "top_classes": [classes[i] for i in indices],
                "top_probabilities": [float(p) for p in probabilities],
            }
            for indices, probabilities in zip(top.tolist(), top_p.tolist(), strict=True)
        ]
        headers = {"X-Model-Version": str(model.version or "")}
        return Response(json.dumps({"predictions": predictions}), media_type="application/json", headers=headers)

    async def ping(request):
        return Response("\n", media_type="text/plain")

    async def describe(request):
        return JSONResponse(holder.current.describe())

    routes = [
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", ping, methods=["GET"]),
        Route("/model", describe, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(settings: Settings, model_uri: str, options: ServerOptions, host: str, port: int, on_ready=None) -> None:
    """Load ``model_uri`` and serve it on ``host:port`` until interrupted (one process, batched)."""
    import uvicorn

    holder = ModelHolder(settings, model_uri, options)
    if on_ready is not None:
        on_ready(holder.current)
    config = uvicorn.Config(
        create_app(holder, options), host=host, port=port, log_level="warning", access_log=False, lifespan="on"
    )
    uvicorn.Server(config).run()
