"""Load test for `lstmgen serve`: requests/s, chars/s and p50/p99 latency at 1, 8, 32 clients.

The server runs in a subprocess on 127.0.0.1 (``lstmgen serve``); this process drives it with
one thread and one keep-alive httpx client per simulated user, for a bounded time and number
of requests per level. Every response is checked (status, one sample of the asked length), a
seeded request is repeated to check it is reproducible, and the server must still be up and
healthy at the end. ``--compare-unbatched`` repeats the run against a server that never
batches (``max_batch=1``), to show what batching buys. Each level runs against lstmgen's own
``/generate`` and the OpenAI-compatible ``/v1/completions`` (``--endpoints``), one after the
other on the same server.

    python bench/bench_serve.py                      # trains a small model first (~30 s)
    python bench/bench_serve.py runs/books --clients 1 8 --duration 5
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PRIMES = ["The ", "ROMEO:\n", "It was ", "And then ", "KING:\nWhat ", "\n", "O, ", "My lord, "]
SHAKESPEARE = Path("/work/shared/data/tiny_shakespeare/input.txt")


def train_small_model(out: Path) -> Path:
    """A 1 x LSTM 256 char model, trained briefly: its weights are random-ish, its cost real."""
    import lstmgen

    if SHAKESPEARE.is_file():
        source = iter([SHAKESPEARE.read_text("utf-8")[:200_000]])
    else:
        source = iter(["the quick brown fox jumps over the lazy dog.\n" * 4000])
    lstmgen.train(source, out=out, model=lstmgen.ModelConfig(units=256, embedding_dim=64),
                  max_steps=30, batch_size=32, seq_len=64, sample_length=0, verbose=0)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lstmgen serve RUN`` in a subprocess (or ``serve(max_batch=1)`` when unbatched)."""

    def __init__(self, run: Path, max_length: int, batched: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if batched:
            command = [sys.executable, "-m", "lstmgen.cli", "serve", str(run), "--port",
                       str(self.port), "--max-length", str(max_length)]
        else:
            command = [sys.executable, "-c",
                       "import sys; from lstmgen.serve import serve; "
                       "serve(sys.argv[1], port=int(sys.argv[2]), max_length=int(sys.argv[3]), "
                       "max_batch=1, max_samples=1)", str(run), str(self.port), str(max_length)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:  # ready once the batch sizes are compiled ("warm")
                r = httpx.get(self.url + "/health", timeout=2)
                if r.status_code == 200 and r.json().get("warm", True):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout:.0f} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def request_for(endpoint: str, model_id: str, prime: str, length: int) -> tuple[str, dict]:
    if endpoint == "openai":
        return "/v1/completions", {"model": model_id, "prompt": prime, "max_tokens": length,
                                   "temperature": 0.8}
    return "/generate", {"prime": prime, "length": length, "temperature": 0.8}


def samples_of(endpoint: str, body: dict) -> list[str]:
    if endpoint == "openai":
        return [choice["text"] for choice in body["choices"]]
    return body["samples"]


def load_level(url: str, clients: int, duration: float, max_requests: int, length: int,
               exact_length: bool, endpoint: str = "native", model_id: str = "") -> dict:
    """``clients`` threads send requests to ``endpoint`` (``native``: /generate; ``openai``:
    /v1/completions) for ``duration`` s (``max_requests`` at most in all); returns
    throughput and latency figures. Any bad response is an error."""
    latencies, chars, errors = [], [], []
    lock = threading.Lock()
    deadline = time.monotonic() + duration
    budget = [max_requests]

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            n = 0
            while time.monotonic() < deadline:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                path, body = request_for(endpoint, model_id, PRIMES[(i + n) % len(PRIMES)],
                                         length)
                start = time.perf_counter()
                try:
                    r = http.post(path, json=body)
                    elapsed = time.perf_counter() - start
                    samples = samples_of(endpoint, r.json()) if r.status_code == 200 else None
                    ok = samples is not None and len(samples) == 1 and (
                        len(samples[0]) == length if exact_length else len(samples[0]) > 0)
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    if ok:
                        latencies.append(elapsed)
                        chars.append(len(samples[0]))
                    else:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 120)
    wall = time.perf_counter() - start
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0

    return {"endpoint": endpoint, "clients": clients, "requests": len(latencies),
            "errors": len(errors),
            "first_errors": errors[:3], "wall_s": wall,
            "requests_per_s": len(latencies) / wall, "chars_per_s": sum(chars) / wall,
            "p50_ms": 1000 * pct(0.50), "p99_ms": 1000 * pct(0.99),
            "mean_ms": 1000 * statistics.fmean(latencies) if latencies else 0}


def bench_server(run: Path, args, batched: bool) -> list[dict]:
    server = Server(run, max_length=max(args.length, 200), batched=batched)
    try:
        t = time.perf_counter()
        server.wait_ready()
        print(f"server ({'batched' if batched else 'max_batch=1'}) ready in "
              f"{time.perf_counter() - t:.1f} s at {server.url}", file=sys.stderr)
        info = httpx.get(server.url + "/info", timeout=10).json()
        exact = info["tokenizer"] == "char"
        model_id = httpx.get(server.url + "/v1/models", timeout=10).json()["data"][0]["id"]
        results = []
        for clients in args.clients:
            # Warm-up (not counted): compiles the batch shapes this level will use.
            load_level(server.url, clients, args.warmup, 4 * clients, args.length, exact)
            for endpoint in args.endpoints:
                result = load_level(server.url, clients, args.duration, args.max_requests,
                                    args.length, exact, endpoint, model_id)
                result["batched"] = batched
                results.append(result)
                print(json.dumps(result), file=sys.stderr)
        seeded = {"prime": "The ", "length": 100, "seed": 5}
        a = httpx.post(server.url + "/generate", json=seeded, timeout=60).json()["samples"]
        b = httpx.post(server.url + "/generate", json=seeded, timeout=60).json()["samples"]
        health = httpx.get(server.url + "/health", timeout=10).json()
        assert a == b, "a seeded request gave two different texts"
        assert server.process.poll() is None and health["status"] == "ok", health
        print(f"seeded request reproducible; server healthy: {health}", file=sys.stderr)
        return results
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", help="run folder (default: train a small model)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per level")
    parser.add_argument("--max-requests", type=int, default=5000, help="cap per level")
    parser.add_argument("--length", type=int, default=200, help="tokens per request")
    parser.add_argument("--endpoints", nargs="+", choices=("native", "openai"),
                        default=["native", "openai"], help="endpoints to load (both)")
    parser.add_argument("--compare-unbatched", action="store_true",
                        help="also run against a server with max_batch=1")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            run = Path(args.run)
        else:
            t = time.perf_counter()
            run = train_small_model(Path(tmp) / "run")
            print(f"trained a small model in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        results = bench_server(run, args, batched=True)
        if args.compare_unbatched:
            results += bench_server(run, args, batched=False)

    print(f"\n{args.length} tokens per request, temperature 0.8, no seed; "
          f"{args.duration:.0f} s per level after {args.warmup:.0f} s of warm-up\n")
    print("| server | endpoint | clients | requests | req/s | chars/s | p50 ms | p99 ms | "
          "errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        server = "batched (default)" if r["batched"] else "max_batch=1"
        endpoint = "/v1/completions" if r["endpoint"] == "openai" else "/generate"
        print(f"| {server} | {endpoint} | {r['clients']} | {r['requests']} | "
              f"{r['requests_per_s']:.1f} | "
              f"{r['chars_per_s']:,.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['errors']} |")
    if any(r["errors"] for r in results):
        sys.exit("some responses were wrong: see first_errors above")


if __name__ == "__main__":
    main()
