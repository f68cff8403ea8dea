"""The OpenAI-compatible completions API, beside lstmgen's own (see :mod:`lstmgen.serve`)::

    POST /v1/completions    OpenAI's request and response shapes; "stream": true for
                            server-sent events in its chunk format, ending with [DONE]
    GET  /v1/models         the served run (its id is the run folder's name)
    GET  /v1/models/{id}

So the official ``openai`` client, and tools built on it, work unchanged::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.completions.create(model="books", prompt="It was", max_tokens=100)

Each prompt is one job of ``n`` samples for the server's worker, so compatible requests batch
with each other and with the native endpoints. ``top_k``, ``min_p`` and
``repetition_penalty`` are extensions (pass them with ``extra_body``). What lstmgen cannot
honour (``logprobs``, ``suffix``, ``best_of`` other than ``n``, presence and frequency
penalties, ``logit_bias``, token-id prompts) is refused with a 400, never ignored. Errors come
in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

import asyncio
import json
import time
import uuid

from lstmgen.errors import LstmgenError
from lstmgen.sampling import Sampling
from lstmgen.stopping import check_request_stop, stop_list


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = (
            status, message, param, kind, code)

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse(status_code=self.status, content={"error": {
            "message": self.message, "type": self.kind, "param": self.param,
            "code": self.code}})


def error_from_validation(errors: list[dict]) -> OpenAIError:
    """A 400 naming the first invalid field, from pydantic's errors."""
    error = errors[0] if errors else {}
    loc = [str(p) for p in error.get("loc", ()) if isinstance(p, str) and p != "body"]
    param = loc[0] if loc else None
    message = error.get("msg", "invalid request")
    return OpenAIError(400, f"{param}: {message}" if param else message, param)


# FastAPI reads the request model from the annotations: they must be real, not strings.


def _request_model(max_length: int, max_samples: int, max_prime_chars: int):
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class CompletionRequest(BaseModel):
        """OpenAI's completion request; unknown fields are refused."""

        model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

        model: str
        prompt: str | list[str] = ""
        max_tokens: int = Field(16, ge=0, le=max_length)
        temperature: float = Field(1.0, ge=0, le=2)
        top_p: float = Field(1.0, gt=0, le=1)
        n: int = Field(1, ge=1, le=max_samples)
        stop: str | list[str] | None = None
        seed: int | None = Field(None, ge=0, le=2**32 - 1)
        stream: bool = False
        stream_options: dict | None = None
        echo: bool = False
        user: str | None = None
        # refused unless at their neutral values
        logprobs: int | None = None
        best_of: int | None = None
        suffix: str | None = None
        presence_penalty: float = 0.0
        frequency_penalty: float = 0.0
        logit_bias: dict | None = None
        # extensions
        top_k: int = Field(0, ge=0)
        min_p: float = Field(0.0, ge=0, le=1)
        repetition_penalty: float = Field(1.0, gt=0)

        @field_validator("prompt")
        @classmethod
        def _prompts(cls, prompt):
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not prompts:
                raise ValueError("give at least one prompt")
            if any(len(p) > max_prime_chars for p in prompts):
                raise ValueError(f"a prompt is over {max_prime_chars} characters")
            return prompt

        _stops = field_validator("stop")(lambda cls, stop: check_request_stop(stop))

        @property
        def prompts(self) -> list[str]:
            return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

        @property
        def stops(self) -> tuple[str, ...]:
            return stop_list(self.stop)

        def refuse_unsupported(self) -> None:
            unsupported = [
                ("logprobs", self.logprobs is not None, "log-probabilities are not returned"),
                ("suffix", self.suffix is not None, "insertion (suffix) is not supported"),
                ("best_of", self.best_of not in (None, self.n),
                 "best_of other than n is not supported (no ranking of samples)"),
                ("presence_penalty", self.presence_penalty != 0,
                 "presence_penalty is not supported; use repetition_penalty"),
                ("frequency_penalty", self.frequency_penalty != 0,
                 "frequency_penalty is not supported; use repetition_penalty"),
                ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ]
            for param, refused, message in unsupported:
                if refused:
                    raise OpenAIError(400, message, param, code="unsupported_parameter")
            if self.stream_options and set(self.stream_options) - {"include_usage"}:
                raise OpenAIError(400, "stream_options takes only include_usage",
                                  "stream_options")

    return CompletionRequest


def add_routes(app, model, scheduler, *, max_length: int, max_samples: int,
               max_prime_chars: int, model_id: str, created: int) -> None:
    """Add the ``/v1`` routes to ``app``, sharing ``scheduler`` with the native endpoints."""
    from fastapi.responses import JSONResponse, StreamingResponse

    from lstmgen.serve import Busy, Job, submit

    CompletionRequest = _request_model(max_length, max_samples, max_prime_chars)
    card = {"id": model_id, "object": "model", "created": created, "owned_by": "lstmgen"}
    tokenizer = model.tokenizer

    @app.exception_handler(OpenAIError)
    async def openai_error(request, exc: OpenAIError):
        return exc.response()

    @app.get("/v1/models", summary="OpenAI-compatible: the served model")
    async def list_models():
        return {"object": "list", "data": [card]}

    @app.get("/v1/models/{name}", summary="OpenAI-compatible: one model")
    async def get_model(name: str):
        if name != model_id:
            raise _unknown_model(name)
        return card

    def start(request) -> list[Job]:
        if request.model != model_id:
            raise _unknown_model(request.model)
        request.refuse_unsupported()
        try:
            sampling = Sampling.from_fields(request, tokenizer.vocab_size)
        except LstmgenError as e:
            raise OpenAIError(400, str(e)) from None
        loop = asyncio.get_running_loop()
        jobs = [Job(prompt, request.max_tokens, sampling, request.seed, request.n, loop,
                    request.stops) for prompt in request.prompts]
        try:
            for job in jobs:  # queued together: the worker batches them
                submit(scheduler, job)
        except Busy as e:
            for job in jobs:
                job.cancelled = True
            raise OpenAIError(503, str(e), kind="server_error", code="server_busy") from None
        return jobs

    def usage(request, texts: list[str], reasons: list[str]) -> dict:
        prompt_tokens = sum(len(tokenizer.encode(p, warn=False)) for p in request.prompts)
        completion = sum(request.max_tokens if reason == "length"
                         else len(tokenizer.encode(text, warn=False))
                         for text, reason in zip(texts, reasons))
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    def head(kind: str = "text_completion") -> dict:
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": model_id}

    @app.post("/v1/completions", summary="OpenAI-compatible text completion")
    async def completions(request: CompletionRequest):
        jobs = start(request)
        if request.stream:
            return StreamingResponse(_chunks(request, jobs, head(), usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        try:
            parts = await asyncio.gather(*(_collect(job) for job in jobs))
        except LstmgenError as e:
            raise OpenAIError(500, str(e), kind="server_error") from None
        finally:
            for job in jobs:
                job.cancelled = True
        texts, reasons, choices = [], [], []
        for prompt, job, samples in zip(request.prompts, jobs, parts):
            for text, reason in zip(samples, job.finish_reasons):
                choices.append({"text": (prompt if request.echo else "") + text,
                                "index": len(choices), "logprobs": None,
                                "finish_reason": reason})
                texts.append(text)
                reasons.append(reason)
        return JSONResponse({**head(), "choices": choices,
                             "usage": usage(request, texts, reasons)})


def _unknown_model(name: str) -> OpenAIError:
    return OpenAIError(404, f"the model {name!r} does not exist; GET /v1/models lists it",
                       "model", code="model_not_found")


async def _collect(job) -> list[str]:
    from lstmgen.serve import job_blocks

    texts = [""] * job.num_samples
    async for block in job_blocks(job):
        texts = [t + b for t, b in zip(texts, block)]
    return texts


async def _chunks(request, jobs, head: dict, usage):
    """OpenAI's streamed chunks: text per choice as it comes, a last chunk per choice with
    its finish reason, the usage if asked for, then ``[DONE]``."""
    from lstmgen.serve import job_blocks

    merged: asyncio.Queue = asyncio.Queue()
    n = request.n

    async def forward(i, job):
        try:
            async for block in job_blocks(job):
                await merged.put((i, block))
            await merged.put((i, None))
        except Exception as e:  # noqa: BLE001 - reported in the stream
            await merged.put((i, e))

    def chunk(choices, **extra) -> str:
        return f"data: {json.dumps({**head, 'choices': choices, **extra})}\n\n"

    tasks = [asyncio.create_task(forward(i, job)) for i, job in enumerate(jobs)]
    texts = [""] * (len(jobs) * n)
    reasons = ["length"] * len(texts)
    try:
        if request.echo:
            yield chunk([{"text": p, "index": i * n + j, "logprobs": None,
                          "finish_reason": None}
                         for i, p in enumerate(request.prompts) for j in range(n)])
        running = len(jobs)
        while running:
            i, item = await merged.get()
            if isinstance(item, BaseException):
                error = {"message": str(item), "type": "server_error", "param": None,
                         "code": None}
                yield f"data: {json.dumps({'error': error})}\n\n"
                return
            if item is None:
                running -= 1
                finished = []
                for j, reason in enumerate(jobs[i].finish_reasons):
                    reasons[i * n + j] = reason
                    finished.append({"text": "", "index": i * n + j, "logprobs": None,
                                     "finish_reason": reason})
                yield chunk(finished)
                continue
            choices = []
            for j, text in enumerate(item):
                if text:
                    texts[i * n + j] += text
                    choices.append({"text": text, "index": i * n + j, "logprobs": None,
                                    "finish_reason": None})
            if choices:
                yield chunk(choices)
        if (request.stream_options or {}).get("include_usage"):
            yield chunk([], usage=usage(request, texts, reasons))
        yield "data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
        for job in jobs:
            job.cancelled = True
