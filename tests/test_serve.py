"""The HTTP server: API, streaming, validation, batching, concurrency and the CLI's errors."""

import asyncio
import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="serving needs fastapi (pip install 'lstmgen[serve]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

import lstmgen  # noqa: E402
from lstmgen.checkpoint import read_state  # noqa: E402
from lstmgen.generation import TextStream  # noqa: E402
from lstmgen.sampling import Sampling  # noqa: E402
from lstmgen.serve import _DONE, BatchScheduler, Job, _bind, create_app, serve  # noqa: E402

MAX_LENGTH = 300
MAX_SAMPLES = 4
pytestmark = pytest.mark.timeout(120)


def corpus():
    """A small inline corpus, so the tests never depend on downloaded data."""
    words = "the quick brown fox jumps over a lazy dog while seven owls sing".split()
    for chunk in range(40):
        yield "".join(
            " ".join(words[(i * 3 + k) % len(words)] for k in range(6)) + f" {i % 10}.\n"
            for i in range(chunk * 50, (chunk + 1) * 50)
        )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    return lstmgen.train(corpus(), out=out, model=lstmgen.ModelConfig(units=32, embedding_dim=16),
                         max_steps=20, batch_size=16, seq_len=32, sample_length=0, verbose=0)


@pytest.fixture(scope="module")
def client(model):
    app = create_app(model, max_length=MAX_LENGTH, max_samples=MAX_SAMPLES, max_batch=8)
    with TestClient(app) as client:
        yield client


def sse(text: str) -> list[tuple[str, dict]]:
    """(event name, data) pairs of a server-sent-events body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
        events.append((name, json.loads(data)))
    return events


# -- endpoints ------------------------------------------------------------------------------
def test_health(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"


def test_info(client, model):
    info = client.get("/info").json()
    # Facts of the run, not of the dict /info was built from.
    text = "".join(corpus())
    assert info["vocab_size"] == len(set(text)) == len(model.tokenizer.chars)
    units, emb, vocab = 32, 16, len(set(text))
    lstm = 4 * units * (emb + units + 1)
    start = 2 * units  # the learned start state: h and c
    assert info["parameters"] == vocab * emb + lstm + units * vocab + vocab + start
    assert info["step"] == 20 and info["tokenizer"] == "char"
    best = read_state(model.run.checkpoint_path("best"))
    assert info["best_step"] == best["best_step"] > 0
    assert info["best_val_loss"] == pytest.approx(best["best_val_loss"])
    # one token per character (the first is not predicted)
    assert info["best_val_bpc"] == pytest.approx(info["best_val_loss"] / np.log(2), rel=1e-3)
    assert info["limits"] == {"max_length": MAX_LENGTH, "max_samples": MAX_SAMPLES,
                              "max_prime_chars": 20_000}


def test_openapi_schema(client):
    schema = client.get("/openapi.json").json()
    assert {"/generate", "/generate/stream", "/info", "/health"} <= set(schema["paths"])
    request = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert request["length"]["maximum"] == MAX_LENGTH
    assert request["top_p"]["exclusiveMinimum"] == 0
    assert client.get("/docs").status_code == 200


def test_web_page(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    for needle in ('<label for="prime">', 'id="temperature"', 'id="top_k"', 'id="top_p"',
                   'id="min_p"', 'id="repetition_penalty"', 'id="stop_at"', 'id="length"',
                   'id="seed"', 'id="generate"', "/generate/stream", "getReader"):
        assert needle in page


def test_generate(client):
    r = client.post("/generate", json={"prime": "the quick", "length": 50, "num_samples": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prime"] == "the quick"
    assert len(body["samples"]) == 3
    assert all(len(s) == 50 for s in body["samples"])  # a char model: one token, one char


def test_min_p_one_is_greedy_over_http(client, model):
    body = {"prime": "the ", "length": 40, "temperature": 1.5, "min_p": 1.0}
    texts = {client.post("/generate", json=dict(body, seed=s)).json()["samples"][0]
             for s in range(3)}
    assert texts == {model.generate("the ", 40, temperature=0)[0]}  # only the likeliest


def test_stop_sequences_and_repetition_penalty_over_http(client, model):
    body = {"prime": "the ", "length": 120, "seed": 3, "num_samples": 3, "temperature": 1.0,
            "repetition_penalty": 1.4}
    plain = client.post("/generate", json=body).json()
    assert plain["finish_reasons"] == ["length"] * 3
    stop = plain["samples"][1][40:43]
    r = client.post("/generate", json={**body, "stop": [stop, "QQ"]})
    assert r.status_code == 200
    expected = model.generate("the ", 120, seed=3, num_samples=3, temperature=1.0,
                              repetition_penalty=1.4, stop=[stop, "QQ"])
    assert r.json()["samples"] == expected
    assert r.json()["finish_reasons"][1] == "stop" and len(expected[1]) <= 40
    events = sse(client.post("/generate/stream", json={**body, "stop": stop}).text)
    streamed = ["".join(column) for column in zip(*(d["samples"] for n, d in events
                                                    if n == "message"))]
    assert streamed == model.generate("the ", 120, seed=3, num_samples=3, temperature=1.0,
                                      repetition_penalty=1.4, stop=stop)
    assert events[-1][0] == "done" and events[-1][1]["finish_reasons"][1] == "stop"


def test_different_primes_with_equal_settings_share_a_batch():
    model = FakeModel()
    scheduler = BatchScheduler(model, max_batch=8)
    texts, _ = run_jobs(scheduler, [spec("a", stops=("x",)), spec("b", stops=("x",)),
                                    spec("c", stops=("y",))])
    scheduler.close()
    batches = {tuple(b[0]): b[2]["stop"] for b in model.generator.batches if b[1]}
    assert batches == {("a", "b"): ["x"], ("c",): ["y"]}
    assert texts[0] == "a0a1a2" and texts[1] == "b0b1b2"


def test_generate_defaults(client):
    body = client.post("/generate", json={}).json()
    assert len(body["samples"]) == 1 and len(body["samples"][0]) == 200


def test_length_zero(client):
    assert client.post("/generate", json={"length": 0}).json()["samples"] == [""]
    events = sse(client.post("/generate/stream", json={"length": 0}).text)
    assert [name for name, _ in events] == ["done"]


def wait_warm(client, timeout=60):
    """Wait until the server has compiled its batch sizes: only then may the test thread use
    the model too (Keras cannot trace one model in two threads at once)."""
    deadline = time.monotonic() + timeout
    while not client.get("/health").json()["warm"]:
        assert time.monotonic() < deadline, "the server never finished warming up"
        time.sleep(0.1)


def test_seed_reproducible(client, model):
    wait_warm(client)
    request = {"prime": "a lazy", "length": 80, "seed": 7, "temperature": 0.8,
               "num_samples": 2}
    first = client.post("/generate", json=request).json()["samples"]
    assert client.post("/generate", json=request).json()["samples"] == first
    # The same text as the Python API (and `lstmgen generate --seed`) gives.
    assert first == model.generate("a lazy", 80, seed=7, temperature=0.8, num_samples=2)
    other = client.post("/generate", json={**request, "seed": 8}).json()["samples"]
    assert other != first


def test_stream(client):
    request = {"prime": "seven owls", "length": 150, "seed": 3}
    with client.stream("POST", "/generate/stream", json=request) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = sse(text)
    assert events[-1][0] == "done" and events[-1][1]["elapsed_s"] >= 0
    chunks = [data["samples"][0] for name, data in events if name == "message"]
    assert len(chunks) >= 3  # 150 tokens in blocks of 64: the text arrives in pieces
    streamed = "".join(chunks)
    assert streamed == client.post("/generate", json=request).json()["samples"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"length": -1}, "length"),
        ({"length": MAX_LENGTH + 1}, "length"),
        ({"length": "many"}, "length"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"min_p": -0.01}, "min_p"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": -1}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_k": -3}, "top_k"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": MAX_SAMPLES + 1}, "num_samples"),
        ({"seed": -1}, "seed"),
        ({"prime": 42}, "prime"),
        ({"lenght": 10}, "lenght"),
    ],
)
@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
def test_invalid_parameters(client, path, body, field):
    r = client.post(path, json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error.startswith(f"{field}: "), error


def test_invalid_number_and_json(client):
    r = client.post("/generate", content=b'{"temperature": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "temperature: Input should be a finite number" in r.text
    r = client.post("/generate", content=b'{"prime": ', headers={"content-type":
                                                                  "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]


def test_body_not_utf8(client):
    r = client.post("/generate", content=b'{"prime": "caf\xe9"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "not valid UTF-8" in r.json()["error"]


def test_body_too_large(client):
    r = client.post("/generate", content=b" " * (2 << 20),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_concurrent_requests_share_batches_with_the_real_model(client, model):
    """Eight requests with equal settings arrive while the worker is busy: the worker takes
    the first alone, then all seven others in one batch of the real model."""
    scheduler = client.app.state.scheduler
    assert wait_for(lambda: client.get("/health").json()["warm"])  # no warm-up in between
    before = client.get("/health").json()
    gate, taken, group = threading.Event(), threading.Event(), scheduler._group

    def held_group(jobs):  # the worker holds here, busy with the jobs it took
        taken.set()
        gate.wait(30)
        return group(jobs)

    scheduler._group = held_group
    results, errors = {}, []

    def ask(i):
        try:
            results[i] = client.post("/generate", json={"prime": f"{i} ", "length": 100})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    try:
        threads[0].start()  # the first request alone, so the worker takes exactly one
        assert taken.wait(30) and not scheduler._pending
        for t in threads[1:]:
            t.start()
        assert wait_for(lambda: len(scheduler._pending) == 7)  # seven waiting
    finally:
        gate.set()
        for t in threads:
            t.join(60)
        scheduler._group = group
    assert not errors and len(results) == 8
    samples = [r.json()["samples"][0] for r in results.values()]
    assert all(r.status_code == 200 for r in results.values())
    assert all(len(text) == 100 for text in samples) and len(set(samples)) == 8
    after = client.get("/health").json()
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] == 2  # 8 requests, 2 batches
    assert after["largest_batch"] >= 7
    assert after["status"] == "ok" and after["queued"] == 0


def wait_for(condition, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# -- under pressure -------------------------------------------------------------------------
def test_full_queue_is_a_503_naming_the_retry(client):
    scheduler = client.app.state.scheduler
    scheduler.max_queue = 0
    try:
        for path in ("/generate", "/generate/stream"):
            r = client.post(path, json={"prime": "a", "length": 5})
            assert r.status_code == 503, path
            assert "server busy" in r.json()["detail"] and "retry later" in r.json()["detail"]
    finally:
        scheduler.max_queue = 256
    assert client.post("/generate", json={"prime": "a", "length": 5}).status_code == 200


def test_queue_takes_max_queue_requests_then_refuses():
    scheduler = BatchScheduler(FakeModel(), max_queue=2)
    loop = asyncio.new_event_loop()
    try:
        with scheduler._wake:  # the worker cannot take them while we hold the lock
            scheduler._thread = threading.current_thread()  # keep the worker unstarted
            for _ in range(2):
                scheduler.submit(Job("a", 3, Sampling(), None, 1, loop))
            with pytest.raises(OverflowError, match="2 requests are already waiting"):
                scheduler.submit(Job("a", 3, Sampling(), None, 1, loop))
    finally:
        loop.close()


def test_client_disconnecting_mid_stream_cancels_its_work(model):
    """A real server and client: the client reads one event of a long stream and hangs up;
    the worker closes the batch long before its end."""
    import httpx
    import uvicorn

    from lstmgen.serve import STREAM_BLOCK

    app = create_app(model, max_length=50_000, warmup=False)
    scheduler = app.state.scheduler
    blocks, closed, stream = [0], threading.Event(), model.generator.stream

    def counted(*args, **kwargs):
        text = stream(*args, **kwargs)
        inner = text._blocks

        def counting():
            try:
                for block in inner:
                    blocks[0] += 1
                    yield block
            finally:
                closed.set()

        text._blocks = counting()
        return text

    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    model.generator.stream = counted
    thread.start()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        assert wait_for(lambda: server.started)
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", url + "/generate/stream",
                             json={"prime": "the ", "length": 50_000}) as r:
                assert r.status_code == 200
                first = next(r.iter_lines())
                assert first.startswith("data:")
            # the connection is closed here, 50,000 tokens before the end
            assert closed.wait(20), "the batch was not closed after the client left"
            assert blocks[0] < 50_000 // STREAM_BLOCK / 2
            assert wait_for(lambda: http.get(url + "/health").json()["running_batches"] == 0)
            assert http.get(url + "/health").json()["status"] == "ok"
    finally:
        server.should_exit = True
        thread.join(20)
        model.generator.stream = stream
        scheduler.close()


def test_requests_waiting_at_shutdown_get_an_error():
    scheduler = BatchScheduler(FakeModel())
    got = {}

    async def main():
        loop = asyncio.get_running_loop()
        running = Job("a", 100_000, Sampling(), 1, 1, loop)
        scheduler.submit(running)
        assert isinstance(await running.queue.get(), list)  # it has started
        await asyncio.to_thread(scheduler.close)
        items = []
        while not running.queue.empty():
            items.append(running.queue.get_nowait())
        got["running"] = items[-1]
        with pytest.raises(lstmgen.LstmgenError, match="shutting down"):
            scheduler.submit(Job("b", 3, Sampling(), None, 1, loop))

    asyncio.run(main())
    assert isinstance(got["running"], lstmgen.LstmgenError)
    assert "shutting down" in str(got["running"])
    assert not scheduler.alive


def test_http_after_shutdown_is_a_503(model):
    app = create_app(model, max_length=50, warmup=False)
    with TestClient(app) as http:
        app.state.scheduler.close()
        r = http.post("/generate", json={"prime": "a", "length": 5})
        assert r.status_code == 503 and "shutting down" in r.json()["detail"]
        assert http.get("/health").status_code == 503


def test_max_samples_above_max_batch_is_refused(model):
    with pytest.raises(lstmgen.LstmgenError, match=r"max_samples \(9\) must be <= max_batch"):
        create_app(model, max_samples=9, max_batch=8, warmup=False)


# -- the scheduler, with a stand-in generator (deterministic, no model) -----------------------
class FakeGenerator:
    """Yields ``length`` blocks of one character per stream, slowly; records batches."""

    def __init__(self, delay=0.005):
        self.delay = delay
        self.batches = []
        self.closed = 0

    def stream(self, primes, length, **sampling):
        self.batches.append((list(primes), length, sampling))
        text = TextStream(0, len(primes))
        text._blocks = self._blocks(primes, length)
        return text

    def _blocks(self, primes, length):
        try:
            for i in range(length):
                time.sleep(self.delay)
                yield [f"{p[:1]}{i % 10}" for p in primes]
        finally:
            self.closed += 1


class FakeModel:
    def __init__(self):
        self.generator = FakeGenerator()


def run_jobs(scheduler, specs, cancel_after=None):
    """Submit jobs (kwargs for Job) together; return each job's text and finish order."""
    finished, texts = [], {}

    async def one(i, job):
        parts = []
        while True:
            item = await job.queue.get()
            if item is not None and not isinstance(item, list):
                break
            parts.append(item[0])
            if cancel_after is not None and len(parts) >= cancel_after:
                job.cancelled = True
                break
        texts[i] = "".join(parts)
        finished.append(i)

    async def main():
        loop = asyncio.get_running_loop()
        jobs = [Job(loop=loop, **spec) for spec in specs]
        with scheduler._wake:  # submit all at once, so they are grouped together
            for job in jobs:
                scheduler._pending.append(job)
        scheduler.submit(Job("", 0, Sampling(), 0, 1, loop))  # start the worker
        await asyncio.wait_for(asyncio.gather(*(one(i, j) for i, j in enumerate(jobs))), 30)

    asyncio.run(main())
    return texts, finished


def spec(prime="x", length=3, sampling=None, seed=None, num_samples=1, stops=()):
    return dict(prime=prime, length=length, sampling=sampling or Sampling(), seed=seed,
                num_samples=num_samples, stops=stops)


def test_scheduler_batches_equal_settings_only():
    model = FakeModel()
    scheduler = BatchScheduler(model, max_batch=4)
    texts, _ = run_jobs(scheduler, [
        spec("a"), spec("b"), spec("c", num_samples=2),   # one batch of 4 streams
        spec("d"),                                         # batch full: a new one
        spec("e", sampling=Sampling(temperature=0.5)),     # other settings
        spec("f", length=4),                               # other length
        spec("g", seed=1), spec("h", seed=1),              # seeded: alone, each
    ])
    scheduler.close()
    primes = sorted(tuple(batch[0]) for batch in model.generator.batches if batch[1])
    assert primes == sorted([("a", "b", "c", "c"), ("d",), ("e",), ("f",), ("g",), ("h",)])
    assert texts[0] == "a0a1a2" and texts[2] == "c0c1c2" and texts[5] == "f0f1f2f3"
    assert scheduler.stats["largest_batch"] == 3


def test_scheduler_pads_unseeded_batches_to_a_power_of_two():
    model = FakeModel()
    scheduler = BatchScheduler(model, max_batch=8)
    run_jobs(scheduler, [spec("a"), spec("b"), spec("c")])
    scheduler.close()
    assert model.generator.batches[0][0] == ["a", "b", "c", ""]


def test_short_request_is_not_stuck_behind_a_long_one():
    model = FakeModel()
    scheduler = BatchScheduler(model)
    _, finished = run_jobs(scheduler, [spec("a", length=200, seed=1), spec("b", length=3)])
    scheduler.close()
    assert finished == [1, 0]


def test_a_failing_batch_reports_its_error_and_the_worker_carries_on():
    class Broken(FakeGenerator):
        def stream(self, primes, length, **sampling):
            if primes[0] == "bad":  # an iterator without finish reasons: fails after a block
                return iter([["b0"] * len(primes)])
            return super().stream(primes, length, **sampling)

    model = FakeModel()
    model.generator = Broken()
    scheduler = BatchScheduler(model)
    errors = []

    async def main():
        loop = asyncio.get_running_loop()
        bad = Job("bad", 3, Sampling(), 1, 1, loop)
        scheduler.submit(bad)
        while True:
            item = await asyncio.wait_for(bad.queue.get(), 30)
            if isinstance(item, BaseException):
                errors.append(item)
                break
        good = Job("good", 3, Sampling(), 1, 1, loop)
        scheduler.submit(good)
        parts = []
        while (item := await asyncio.wait_for(good.queue.get(), 30)) is not _DONE:
            parts.append(item[0])
        return "".join(parts)

    assert asyncio.run(main()) == "g0g1g2"
    assert scheduler.alive and isinstance(errors[0], AttributeError)
    scheduler.close()


def test_cancelled_request_stops_its_batch():
    model = FakeModel()
    scheduler = BatchScheduler(model)
    texts, _ = run_jobs(scheduler, [spec("a", length=10_000)], cancel_after=2)
    deadline = time.monotonic() + 10
    while model.generator.closed < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.close()
    assert texts[0] == "a0a1"
    assert model.generator.closed == 2  # the warm-up job and the cancelled one


# -- the command --------------------------------------------------------------------------
def test_serve_missing_run_is_a_one_line_error(tmp_path, capsys):
    from lstmgen.cli import main

    with pytest.raises(lstmgen.LstmgenError, match="no run folder"):
        serve(tmp_path / "missing", port=0)
    assert main(["serve", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no run folder") and err.count("\n") == 1


def test_serve_binds_localhost_by_default():
    import inspect

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    sock = _bind("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        with pytest.raises(lstmgen.LstmgenError, match=f"cannot listen on 127.0.0.1:{port}"):
            _bind("127.0.0.1", port)
    finally:
        sock.close()


def test_port_in_use_is_an_error_before_serving(model):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(lstmgen.LstmgenError, match="cannot listen"):
            serve(model.run.path, port=busy.getsockname()[1], warmup=False)
    finally:
        busy.close()
