"""The HTTP server: API, streaming, validation, batching, concurrency and the CLI's errors."""

import asyncio
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="serving needs fastapi (pip install 'lstmgen[serve]')")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402

import lstmgen  # noqa: E402
from lstmgen.sampling import Sampling  # noqa: E402
from lstmgen.serve import BatchScheduler, Job, _bind, create_app, serve  # noqa: E402

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
    assert info["vocab_size"] == model.tokenizer.vocab_size
    assert info["model"]["units"] == 32
    assert info["best_val_bpc"] == pytest.approx(model.info()["best_val_bpc"])
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
                   'id="length"', 'id="seed"', 'id="generate"', "/generate/stream",
                   "getReader"):
        assert needle in page


def test_generate(client):
    r = client.post("/generate", json={"prime": "the quick", "length": 50, "num_samples": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prime"] == "the quick"
    assert len(body["samples"]) == 3
    assert all(len(s) == 50 for s in body["samples"])  # a char model: one token, one char


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


def test_concurrent_requests_from_threads(client):
    before = client.get("/health").json()
    results, errors = {}, []

    def ask(i):
        try:
            r = client.post("/generate", json={"prime": f"{i} ", "length": 100})
            results[i] = r
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 8
    assert all(r.status_code == 200 and len(r.json()["samples"][0]) == 100
               for r in results.values())
    after = client.get("/health").json()
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] <= 8
    assert after["status"] == "ok" and after["queued"] == 0


# -- the scheduler, with a stand-in generator (deterministic, no model) -----------------------
class FakeGenerator:
    """Yields ``length`` blocks of one character per stream, slowly; records batches."""

    def __init__(self, delay=0.005):
        self.delay = delay
        self.batches = []
        self.closed = 0

    def stream(self, primes, length, **sampling):
        self.batches.append((list(primes), length, sampling))
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


def spec(prime="x", length=3, sampling=None, seed=None, num_samples=1):
    return dict(prime=prime, length=length, sampling=sampling or Sampling(), seed=seed,
                num_samples=num_samples)


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
