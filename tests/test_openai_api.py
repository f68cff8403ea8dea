"""The OpenAI-compatible endpoint, driven by the official ``openai`` client against a real
server on 127.0.0.1, and its batching with the native endpoints."""

import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai", reason="the openai client is a test extra")
pytest.importorskip("uvicorn", reason="serving needs uvicorn (pip install 'lstmgen[serve]')")

from lstmgen.serve import _bind, create_app  # noqa: E402

pytestmark = pytest.mark.timeout(180)
KEY = "s3cret-key"


def start_server(app):
    import uvicorn

    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def server(trained_run):
    model, run = trained_run
    app = create_app(model, max_length=300, max_samples=4, max_batch=8)
    server, thread, url = start_server(app)
    yield model, run.resolve().name, url, app
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(server):
    _, _, url, _ = server
    return openai.OpenAI(base_url=url + "/v1", api_key="anything", max_retries=0)


def test_plain_completion_is_what_generate_gives(server, client):
    model, name, _, _ = server
    r = client.completions.create(model=name, prompt="ROMEO:", max_tokens=30, seed=5,
                                  temperature=0.8)
    assert r.object == "text_completion" and r.model == name and r.id.startswith("cmpl-")
    assert abs(r.created - time.time()) < 60
    (choice,) = r.choices
    assert choice.text == model.generate("ROMEO:", 30, seed=5, temperature=0.8)[0]
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == \
        (6, 30, 36)
    again = client.completions.create(model=name, prompt="ROMEO:", max_tokens=30, seed=5,
                                      temperature=0.8)
    assert again.choices[0].text == choice.text  # the seed reproduces the text


def test_n_stop_and_extensions(server, client):
    model, name, _, _ = server
    settings = dict(seed=2, temperature=1.0, top_p=0.95)
    r = client.completions.create(model=name, prompt="the ", max_tokens=60, n=3, **settings,
                                  extra_body={"top_k": 20, "repetition_penalty": 1.3})
    expected = model.generate("the ", 60, num_samples=3, top_k=20, repetition_penalty=1.3,
                              **settings)
    assert [c.text for c in r.choices] == expected and [c.index for c in r.choices] == [0, 1, 2]
    stop = expected[1][20:23]
    r = client.completions.create(model=name, prompt="the ", max_tokens=60, n=3, stop=stop,
                                  **settings, extra_body={"top_k": 20,
                                                          "repetition_penalty": 1.3})
    cut = [t[: t.find(stop)] if stop in t else t for t in expected]
    assert [c.text for c in r.choices] == cut
    assert r.choices[1].finish_reason == "stop"
    assert r.usage.completion_tokens == sum(60 if c.finish_reason == "length" else len(c.text)
                                            for c in r.choices)


def test_a_list_of_prompts_one_completion_each_in_order(server, client):
    model, name, _, _ = server
    prompts = ["First Citizen:", "MENENIUS:"]
    r = client.completions.create(model=name, prompt=prompts, max_tokens=25, n=2, seed=9,
                                  echo=True)
    expected = [p + t for p in prompts for t in model.generate(p, 25, num_samples=2, seed=9,
                                                               temperature=1.0)]
    assert [c.text for c in r.choices] == expected
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == len("First Citizen:") + len("MENENIUS:")


def test_streamed_chunks_join_to_the_completion(server, client):
    _, name, _, _ = server
    args = dict(model=name, prompt=["the ", "ROMEO:"], max_tokens=150, n=2, seed=4,
                stop=["\n\n"])
    whole = client.completions.create(**args)
    texts, reasons, chunks = {}, {}, 0
    for chunk in client.completions.create(**args, stream=True,
                                           stream_options={"include_usage": True}):
        chunks += 1
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
        if chunk.usage:
            usage = chunk.usage
    assert chunks > 4  # the text came in pieces
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    assert [reasons[i] for i in range(4)] == [c.finish_reason for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_raw_stream_ends_with_done(server):
    _, name, url, _ = server
    r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "a",
                                                  "max_tokens": 5, "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.rstrip().endswith("data: [DONE]")


def test_models(server, client):
    _, name, _, _ = server
    assert [m.id for m in client.models.list().data] == [name]
    assert client.models.retrieve(name).owned_by == "lstmgen"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")


@pytest.mark.parametrize("extra, param", [
    ({"logprobs": 1}, "logprobs"),
    ({"suffix": "end"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"max_tokens": 301}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"n": 5}, "n"),
    ({"stop": ""}, "stop"),
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_what_cannot_be_honoured_is_a_400_in_openais_shape(server, extra, param):
    _, name, url, _ = server
    r = httpx.post(url + "/v1/completions", json={"model": name, "prompt": "a", **extra})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_model_is_a_404(server, client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-9", prompt="a", max_tokens=3)
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found"


def test_compatible_and_native_requests_share_a_batch(server):
    model, name, url, app = server
    scheduler = app.state.scheduler
    deadline = time.monotonic() + 60
    while not scheduler.warm.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    gate, group = threading.Event(), scheduler._group
    scheduler._group = lambda jobs: (gate.wait(30), group(jobs))[1]
    before = dict(scheduler.stats)
    results = []

    def native(prime):
        results.append(httpx.post(url + "/generate", json={"prime": prime, "length": 40,
                                                           "temperature": 0.8}, timeout=60))

    def compatible(prompt):
        results.append(httpx.post(url + "/v1/completions", json={
            "model": name, "prompt": prompt, "max_tokens": 40, "temperature": 0.8}, timeout=60))

    threads = [threading.Thread(target=native, args=("the ",))]
    threads += [threading.Thread(target=compatible, args=(p,)) for p in ("a", ["b", "c"])]
    threads += [threading.Thread(target=native, args=("d",))]
    try:
        threads[0].start()
        deadline = time.monotonic() + 30
        while (scheduler.stats["requests"] == before["requests"] or scheduler._pending) \
                and time.monotonic() < deadline:
            time.sleep(0.01)  # until the worker has taken the first (it waits at the gate)
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 30
        while len(scheduler._pending) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(scheduler._pending) == 4  # one native, three compatible prompts
    finally:
        gate.set()
        for t in threads:
            t.join(60)
        scheduler._group = group
    assert [r.status_code for r in results] == [200] * 4
    assert scheduler.stats["requests"] - before["requests"] == 5
    assert scheduler.stats["batches"] - before["batches"] == 2  # the first; the other four


def test_api_key_is_required_everywhere_but_health(trained_run):
    model, run = trained_run
    app = create_app(model, max_length=50, max_samples=2, max_batch=2, warmup=False,
                     api_key=KEY)
    server, thread, url = start_server(app)
    try:
        name = run.resolve().name
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model=name, prompt="a", max_tokens=3).choices
        bad = openai.OpenAI(base_url=url + "/v1", api_key=KEY + "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.completions.create(model=name, prompt="a", max_tokens=3)
        assert caught.value.status_code == 401
        assert caught.value.body["code"] == "invalid_api_key"
        assert httpx.get(url + "/health").status_code == 200
        for path in ("/", "/info", "/v1/models"):
            assert httpx.get(url + path).status_code == 401, path
        assert httpx.post(url + "/generate", json={"length": 3}).status_code == 401
        ok = httpx.post(url + "/generate", json={"length": 3},
                        headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
