"""Serve a trained run over HTTP: a JSON API, a server-sent-events stream and a web page.

::

    GET  /                  the web page (static/index.html, held in memory)
    GET  /info              the run's summary (TrainedModel.info()) and the server's limits
    GET  /health            liveness and the generation worker's counters
    POST /generate          {"prime", "length", "temperature", "top_k", "top_p", "min_p",
                            "repetition_penalty", "stop", "seed", "num_samples"}
                            -> {"samples": [...], "finish_reasons": [...], ...}
    POST /generate/stream   the same request; text arrives as server-sent events
    GET  /docs, /openapi.json   FastAPI's generated documentation
    POST /v1/completions, GET /v1/models   OpenAI-compatible (:mod:`lstmgen.openai_api`)

With an API key (``--api-key`` or ``LSTMGEN_API_KEY``), every endpoint but ``/health``
requires ``Authorization: Bearer KEY``.

The model is loaded once. One worker thread runs all generation, so the event loop never
waits on the model. Requests queued at the same moment with the same sampling settings, length
and stop sequences, and no seed, are batched (whatever their primes) into one
:meth:`Generator.stream` call (one stream per sample); the worker then steps every running
batch one block at a time, in turn, so a short request is never stuck behind a long one. A
request with a seed runs in a batch of its own, so its text is exactly what
``lstmgen generate --seed`` gives.
"""


import asyncio
import collections
import hmac
import json
import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources

from lstmgen.errors import LstmgenError
from lstmgen.run import TrainedModel, load
from lstmgen.sampling import Sampling
from lstmgen.stopping import check_request_stop, stop_list

MAX_SEED = 2**32 - 1
STREAM_BLOCK = 64  # tokens per step of a batch: text arrives in small pieces, batches alternate
_DONE = object()


# -- the generation worker ----------------------------------------------------------------
@dataclass(eq=False)
class Job:
    """One request: ``num_samples`` continuations of ``prime``. Blocks of text go to
    ``queue`` (on the event loop ``loop``), then ``_DONE`` or the exception that stopped it."""

    prime: str
    length: int
    sampling: Sampling
    seed: int | None
    num_samples: int
    loop: asyncio.AbstractEventLoop
    stops: tuple[str, ...] = ()
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the event loop when the client goes away
    finish_reasons: list = field(default_factory=list)  # set before _DONE is put

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the request's event loop has closed: nobody is listening
            self.cancelled = True

    @property
    def batch_key(self):
        """Jobs with equal keys may share a batch; seeded jobs never share."""
        return None if self.seed is not None else (self.sampling, self.length, self.stops)


class _Batch:
    """Jobs run as one :meth:`Generator.stream` call; each owns a slice of its streams."""

    def __init__(self, generator, jobs: list[Job], pad_to: int):
        self.jobs = jobs
        primes, self.slices = [], []
        for job in jobs:
            self.slices.append(slice(len(primes), len(primes) + job.num_samples))
            primes += [job.prime] * job.num_samples
        # Pad unseeded batches to a power of two: each new batch size is a fresh XLA compile
        # (seconds), an idle stream costs microseconds.
        primes += [""] * (pad_to - len(primes))
        first = jobs[0]
        self.streams = len(primes)
        self._error = None
        try:
            self._blocks = generator.stream(
                primes, first.length, **first.sampling.to_dict(), stop=list(first.stops),
                seed=first.seed, block=STREAM_BLOCK,
            )
        except Exception as e:  # noqa: BLE001 - reported to the waiting requests
            self._error = e

    def step(self) -> bool:
        """Generate the next block and hand it out; False once the batch is finished. Any
        error goes to the batch's requests; the worker carries on."""
        try:
            return self._step()
        except Exception as e:  # noqa: BLE001 - reported to the waiting requests
            self._finish(e)
            return False

    def _step(self) -> bool:
        if self._error is not None:
            raise self._error
        if all(job.cancelled for job in self.jobs):
            self._blocks.close()
            return False
        try:
            block = next(self._blocks)
        except StopIteration:
            self._done()
            return False
        for job, part in zip(self.jobs, self.slices, strict=True):
            if not job.cancelled:
                job.put(block[part])
        reasons = self._blocks.finish_reasons
        if all(reasons[part] == ["stop"] * job.num_samples
               for job, part in zip(self.jobs, self.slices)):  # only padding runs on
            self._blocks.close()
            self._done()
            return False
        return True

    def _done(self) -> None:
        reasons = [reason or "length" for reason in self._blocks.finish_reasons]
        for job, part in zip(self.jobs, self.slices):
            job.finish_reasons = reasons[part]
        self._finish(_DONE)

    def _finish(self, item) -> None:
        for job in self.jobs:
            job.put(item)


class BatchScheduler:
    """The one thread that runs the model. Jobs queued together with the same settings are
    batched (up to ``max_batch`` streams); running batches advance one block each in turn.

    Example:
        >>> scheduler = BatchScheduler(lstmgen.load("runs/books"))    # doctest: +SKIP
        >>> scheduler.submit(job)                                     # doctest: +SKIP
    """

    def __init__(self, model, max_batch: int = 32, max_queue: int = 256,
                 warm_sizes: tuple[int, ...] = ()):
        self.model = model
        # Batch sizes to compile while idle. Keras traces a model's call in shared layer
        # state, so all tracing (compiling) must happen in this one thread, never alongside.
        self._to_warm = list(warm_sizes)
        self.warm = threading.Event()
        if not self._to_warm:
            self.warm.set()
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._active: list[_Batch] = []
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = {"requests": 0, "batches": 0, "streams": 0, "largest_batch": 0}

    # -- the event loop's side ---------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._wake:
            if self._stopping:
                raise LstmgenError("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise OverflowError(f"{len(self._pending)} requests are already waiting")
            self._start_thread()
            self._pending.append(job)
            self.stats["requests"] += 1
            self._wake.notify()

    def start(self) -> None:
        """Start the worker now (else at the first request), e.g. to warm up while idle."""
        with self._wake:
            self._start_thread()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lstmgen-generate",
                                            daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return not self._stopping and (self._thread is None or self._thread.is_alive())

    def load(self) -> dict:
        return {"queued": len(self._pending), "running_batches": len(self._active)}

    # -- the worker thread ---------------------------------------------------------------
    def _run(self) -> None:
        generator = self.model.generator
        while True:
            with self._wake:
                while not (self._pending or self._active or self._stopping or self._to_warm):
                    self._wake.wait()
                if self._stopping:
                    break
                waiting = list(self._pending)
                self._pending.clear()
            if not (waiting or self._active):
                self._warm_next(generator)
                continue
            for jobs in self._group(waiting):
                self._active.append(self._start(generator, jobs))
            self._active = [batch for batch in self._active if batch.step()]
        self._shut_down()

    def _warm_next(self, generator) -> None:
        """Compile the generation step for the next batch size (seconds), so the first batch
        of that size does not wait for XLA."""
        size = self._to_warm.pop(0)
        try:
            generator.generate([""] * size, 1, seed=0, block=STREAM_BLOCK)
        except Exception as e:  # noqa: BLE001 - a failed warm-up only costs time later
            warnings.warn(f"warming up batch size {size} failed: {e}", stacklevel=1)
        finally:
            if not self._to_warm:
                self.warm.set()

    def _group(self, jobs: list[Job]) -> list[list[Job]]:
        groups: dict = {}
        batches = []
        for job in jobs:
            if job.cancelled:
                continue
            if job.batch_key is None:
                batches.append([job])
                continue
            group = groups.get(job.batch_key)
            if group is None or sum(j.num_samples for j in group) + job.num_samples > \
                    self.max_batch:
                group = groups[job.batch_key] = []
                batches.append(group)
            group.append(job)
        return batches

    def _start(self, generator, jobs: list[Job]) -> _Batch:
        streams = sum(job.num_samples for job in jobs)
        pad_to = streams if jobs[0].seed is not None else batch_size(streams, self.max_batch)
        batch = _Batch(generator, jobs, pad_to)
        self.stats["batches"] += 1
        self.stats["streams"] += streams
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(jobs))
        return batch

    def _shut_down(self) -> None:
        error = LstmgenError("the server is shutting down")
        for batch in self._active:
            batch._finish(error)
        with self._wake:
            for job in self._pending:
                job.put(error)
            self._pending.clear()
        self._active = []


class Busy(Exception):
    """The queue is full, or the server is shutting down: HTTP 503."""


def submit(scheduler: BatchScheduler, job: Job) -> None:
    """Queue ``job``; raises :class:`Busy` (a 503) when it cannot be taken."""
    try:
        scheduler.submit(job)
    except OverflowError as e:
        raise Busy(f"server busy: {e}; retry later") from None
    except LstmgenError as e:
        raise Busy(str(e)) from None


async def job_blocks(job: Job):
    """Yield a submitted job's blocks (lists of strings, one per sample) as they come; the
    error that stopped it is raised. Leaving early cancels the job."""
    try:
        while True:
            item = await job.queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        job.cancelled = True


def batch_size(streams: int, max_batch: int) -> int:
    """The padded size of an unseeded batch: the next power of two, at most ``max_batch``."""
    return max(streams, min(1 << (streams - 1).bit_length(), max_batch))


# -- the HTTP application -----------------------------------------------------------------
def _request_model(max_length: int, max_samples: int, max_prime_chars: int):
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class GenerateRequest(BaseModel):
        """What to generate. Unknown fields are refused, so a misspelt option is an error."""

        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

        prime: str = Field("", max_length=max_prime_chars,
                           description="text to continue (not repeated in the output)")
        length: int = Field(min(200, max_length), ge=0, le=max_length,
                            description="tokens to generate per sample")
        temperature: float = Field(0.8, ge=0,
                                   description="0 = greedy, 1 = as trained, lower is safer")
        top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens (0 = off)")
        top_p: float = Field(1.0, gt=0, le=1,
                             description="sample from the smallest set with this probability")
        min_p: float = Field(0.0, ge=0, le=1,
                             description="keep tokens at least this share as likely as the "
                                         "likeliest (0 = off)")
        repetition_penalty: float = Field(1.0, gt=0,
                                          description="above 1 repeats tokens of the text "
                                                      "less, e.g. 1.2 (1 = off)")
        stop: str | list[str] | None = Field(
            None, description="end a sample where one of these first appears (not returned)")
        seed: int | None = Field(None, ge=0, le=MAX_SEED,
                                 description="the same seed and settings give the same text")
        num_samples: int = Field(1, ge=1, le=max_samples,
                                 description="continuations generated together")

        _stops = field_validator("stop")(lambda cls, stop: check_request_stop(stop))

        @property
        def stops(self) -> tuple[str, ...]:
            return stop_list(self.stop)

    return GenerateRequest


def _invalid(errors: list[dict]):
    """A 422 response: a one-line ``error`` and pydantic's errors (without echoed input)."""
    from fastapi.responses import JSONResponse

    detail = [{"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
              for e in errors]
    return JSONResponse(status_code=422, content={"error": _summary(errors), "detail": detail})


class _Utf8Body:
    """ASGI middleware: a request body that is not UTF-8 is a 422 with a clear message (FastAPI
    would answer 400 "error parsing the body"); a body over ``limit`` bytes is a 413."""

    def __init__(self, app, limit: int = 1 << 20):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                from fastapi.responses import JSONResponse

                response = JSONResponse(status_code=413, content={
                    "error": f"request body over {self.limit} bytes"})
                return await response(scope, receive, send)
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            response = _invalid([{"type": "utf8", "loc": ("body",),
                                  "msg": f"the request body is not valid UTF-8 ({e.reason} "
                                         f"at byte {e.start})"}])
            return await response(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


class _BearerKey:
    """ASGI middleware: every request but ``/health`` must carry ``Authorization: Bearer
    KEY`` (compared in constant time), else a 401 (in OpenAI's shape under ``/v1``)."""

    def __init__(self, app, key: str):
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or ()).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        from fastapi.responses import JSONResponse

        message = "a valid API key is needed: send the header 'Authorization: Bearer KEY'"
        body = ({"error": {"message": message, "type": "invalid_request_error",
                           "param": None, "code": "invalid_api_key"}}
                if scope["path"].startswith("/v1/") else {"error": message})
        response = JSONResponse(status_code=401, content=body,
                                headers={"WWW-Authenticate": "Bearer"})
        return await response(scope, receive, send)


def _summary(errors) -> str:
    """One line from pydantic's errors, e.g. ``length: Input should be less than or equal to
    2000, got 5000``."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if isinstance(p, str) and p != "body"]
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            message = f"the body is not valid JSON ({reason})" if reason else message
        value = error.get("input")
        if isinstance(value, (int, float, str)) and loc and len(repr(value)) <= 40:
            message += f", got {value!r}"
        parts.append(f"{'.'.join(loc)}: {message}" if loc else message)
    return "; ".join(parts)


def create_app(model, *, max_length: int = 2000, max_samples: int = 16, max_batch: int = 32,
               max_prime_chars: int = 20_000, checkpoint: str = "best", warmup: bool = True,
               api_key: str | None = None):
    """A FastAPI application serving ``model`` (a :class:`TrainedModel` or a run folder).

    ``max_length`` caps the tokens a request may ask for; ``max_batch`` the streams batched
    into one model step. ``warmup`` compiles the generation step for one stream before the
    app is returned, then for the other batch sizes in the worker whenever it is idle
    (``/health`` reports ``"warm": true`` once done). While the app runs, generate with
    ``model`` only through it: Keras cannot trace one model in two threads at once.
    ``api_key``: when given, every endpoint but ``/health`` requires it as a bearer token.

    Example:
        >>> app = create_app("runs/books", max_length=1000)           # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)             # doctest: +SKIP
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    if not isinstance(model, TrainedModel):
        model = load(model, checkpoint)
    if max_samples > max_batch:
        raise LstmgenError(f"max_samples ({max_samples}) must be <= max_batch ({max_batch})")
    sizes = ()
    if warmup:
        model.generate("", 1, seed=0)
        sizes = tuple(sorted({batch_size(n, max_batch) for n in range(2, max_batch + 1)}))
    scheduler = BatchScheduler(model, max_batch=max_batch, warm_sizes=sizes)
    scheduler.start()
    info = {**model.info(), "limits": {"max_length": max_length, "max_samples": max_samples,
                                       "max_prime_chars": max_prime_chars}}
    page = (resources.files("lstmgen") / "static" / "index.html").read_text("utf-8")
    GenerateRequest = _request_model(max_length, max_samples, max_prime_chars)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(scheduler.close)

    app = FastAPI(title="lstmgen", version=info["lstmgen_version"] or "", lifespan=lifespan,
                  description="Generate text with a trained lstmgen LSTM language model.")
    app.add_middleware(_Utf8Body)
    if api_key:
        app.add_middleware(_BearerKey, key=api_key)
    app.state.scheduler = scheduler
    app.state.model = model
    from lstmgen import openai_api

    openai_api.add_routes(app, model, scheduler, max_length=max_length,
                          max_samples=max_samples, max_prime_chars=max_prime_chars,
                          model_id=model.run.path.resolve().name,
                          created=int((model.run.path / "config.json").stat().st_mtime))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        if request.url.path.startswith("/v1/"):
            return openai_api.error_from_validation(exc.errors()).response()
        return _invalid(exc.errors())

    async def blocks(request: GenerateRequest, jobs: list):
        """Submit a job (appended to ``jobs``, where its ``finish_reasons`` can be read once
        it is done); yield its blocks (lists of strings, one per sample) as they come."""
        try:
            sampling = Sampling.from_fields(request, model.tokenizer.vocab_size)
        except LstmgenError as e:
            raise HTTPException(422, detail=str(e)) from None
        job = Job(request.prime, request.length, sampling, request.seed, request.num_samples,
                  asyncio.get_running_loop(), request.stops)
        jobs.append(job)
        try:
            submit(scheduler, job)
        except Busy as e:
            raise HTTPException(503, detail=str(e)) from None
        async for block in job_blocks(job):
            yield block

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/info", summary="The model: config, vocabulary, best validation figures")
    async def get_info() -> dict:
        return info

    @app.get("/health", summary="Liveness and the generation worker's counters")
    async def health():
        body = {"status": "ok" if scheduler.alive else "worker stopped",
                "warm": scheduler.warm.is_set(), **scheduler.load(), **scheduler.stats}
        return JSONResponse(body, status_code=200 if scheduler.alive else 503)

    @app.post("/generate", summary="Generate text; the whole result as JSON")
    async def generate(request: GenerateRequest) -> dict:
        start = time.perf_counter()
        samples, jobs = [""] * request.num_samples, []
        try:
            async for block in blocks(request, jobs):
                samples = [text + new for text, new in zip(samples, block, strict=True)]
        except LstmgenError as e:
            raise HTTPException(422, detail=str(e)) from None
        return {**request.model_dump(), "samples": samples,
                "finish_reasons": jobs[0].finish_reasons,
                "elapsed_s": round(time.perf_counter() - start, 4)}

    @app.post("/generate/stream", summary="Generate text, streamed as server-sent events",
              description="Events: `data: {\"samples\": [new text per sample]}` as text is "
                          "generated, then `event: done` (or `event: error`).",
              response_class=StreamingResponse)
    async def generate_stream(request: GenerateRequest):
        start = time.perf_counter()
        jobs = []
        source = blocks(request, jobs)
        # Submit now, so that a full queue is a 503 rather than an error event.
        first = await _first(source)

        async def events():
            try:
                if first is not None:
                    yield _event({"samples": first})
                    async for block in source:
                        yield _event({"samples": block})
                yield _event({"finish_reasons": jobs[0].finish_reasons,
                              "elapsed_s": round(time.perf_counter() - start, 4)}, "done")
            except Exception as e:  # noqa: BLE001 - the status line has already been sent
                yield _event({"error": str(e)}, "error")
            finally:
                await source.aclose()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})

    return app


async def _first(source):
    """The first block of ``source`` (None if there is none); HTTP errors propagate."""
    try:
        return await source.__anext__()
    except StopAsyncIteration:
        return None
    except LstmgenError as e:
        from fastapi import HTTPException

        raise HTTPException(422, detail=str(e)) from None


def _event(data: dict, name: str | None = None) -> str:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


# -- the command ----------------------------------------------------------------------------
def serve(run, host: str = "127.0.0.1", port: int = 8000, max_length: int = 2000,
          **options) -> None:
    """Load the run in ``run``, then serve it until interrupted (``lstmgen serve``).

    The model is loaded and the port bound before the server starts, so a missing run folder
    or a busy port is a one-line :class:`LstmgenError`. ``options`` go to :func:`create_app`.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise LstmgenError(f"serving needs fastapi and uvicorn ({e})",
                           hint="pip install 'lstmgen[serve]'") from None
    model = load(run, options.pop("checkpoint", "best"))
    if options.get("api_key") is None:
        options["api_key"] = os.environ.get("LSTMGEN_API_KEY") or None
    sock = _bind(host, port)
    app = create_app(model, max_length=max_length, **options)
    shown = f"[{host}]" if ":" in host else host
    print(f"lstmgen: serving {run} at http://{shown}:{sock.getsockname()[1]}/ (Ctrl+C stops)",
          flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"lstmgen: listening on {host}: other machines can reach this server", flush=True)
    if options.get("api_key"):
        print("lstmgen: an API key is required (Authorization: Bearer KEY), except at /health",
              flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except (OSError, OverflowError) as e:
        raise LstmgenError(f"cannot listen on {host}:{port} ({e})",
                           hint="pick another --port, or check --host") from None
    sock.set_inheritable(True)
    return sock
