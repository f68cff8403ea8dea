"""Streaming data: char-encoding speed and flat memory, small corpus vs large corpus.

Writes synthetic corpora (shuffled lines of the shared English texts) into a temporary
folder, then in a *fresh subprocess* each: encodes it with ``lstmgen.dataset.encode_corpus``
(MB/s, peak RSS) and trains a few hundred steps on it with ``lstmgen.train`` (peak RSS). The
targets: encoding >= 100 MB/s on one core, peak memory not growing with the corpus size.

    python bench/bench_streaming.py              # 100 MB vs 1 GB (+ 100 MB of non-Latin text)
    python bench/bench_streaming.py --quick      # 20 MB vs 200 MB, fewer training steps
    python bench/bench_streaming.py --huge       # 100 MB vs 10 GB (needs ~25 GB of disk)

The training runs also time the input pipeline: the seconds spent inside
``WindowDataset.__getitem__`` (reading the windows from disk), as a share of the training
time after encoding -- the target is < 5%, i.e. the generator never starves the model.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PeakAnonSampler, data_dir, header, load, mib, proc_status  # noqa: E402

ENGLISH = ["tiny_shakespeare/input.txt", "war_and_peace/warpeace_input.txt",
           "gutenberg/pg11.txt", "gutenberg/pg1342.txt", "gutenberg/pg1661.txt",
           "gutenberg/pg2701.txt"]
NON_LATIN = ["unicode/goethe_faust.txt", "unicode/goethe_faust_2.txt",
             "unicode/hongloumeng.txt"]


def source_lines(names: list[str]) -> list[str]:
    folder = data_dir()
    paths = [folder / n for n in names] if folder else []
    paths = [p for p in paths if p.is_file()]
    if not paths:  # anyone can run this: fall back to Python's own sources
        from lstmgen.corpus import default_corpus

        paths = default_corpus()
    lines = []
    for p in paths:
        lines.extend(p.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True))
    return lines


def write_corpus(path: Path, size: int, lines: list[str], seed: int = 0) -> None:
    """About ``size`` bytes of lines, reshuffled for every block, so no two blocks match."""
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            rng.shuffle(lines)
            block = "".join(lines).encode("utf-8")[: size - written]
            cut = block.rfind(b"\n") + 1 or len(block)
            f.write(block[:cut].decode("utf-8", errors="ignore"))
            written += cut


# -- the measured children -------------------------------------------------------------
def child_encode(corpus: str, out: str) -> dict:
    from lstmgen.dataset import encode_corpus

    base = proc_status()
    with PeakAnonSampler() as sampler:
        started, cpu = time.perf_counter(), time.process_time()
        tok, enc = encode_corpus(corpus, out, verbose=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    size = os.path.getsize(corpus)
    return {"seconds": seconds, "mb_per_s": size / seconds / 1e6,
            "cpu_mb_per_s": size / cpu / 1e6, "vocab": tok.vocab_size,
            "tokens": enc.meta.n_tokens, "base_rss": base.get("VmRSS", 0),
            "peak_anon": sampler.peak, "peak_file": sampler.peak_file, **proc_status()}


def child_train(corpus: str, out: str, steps: int) -> dict:
    import lstmgen
    from lstmgen.dataset import WindowDataset

    # Keras calls __getitem__ on the training thread (workers=1, no multiprocessing), so the
    # time inside it is time the model waits for data.
    pipeline = {"seconds": 0.0, "batches": 0, "first": None}
    read = WindowDataset.__getitem__

    def timed(self, index):
        started = time.perf_counter()
        pipeline["first"] = pipeline["first"] or started
        try:
            return read(self, index)
        finally:
            pipeline["seconds"] += time.perf_counter() - started
            pipeline["batches"] += 1

    WindowDataset.__getitem__ = timed
    base = proc_status()
    with PeakAnonSampler() as sampler:
        started = time.perf_counter()
        lstmgen.train(corpus, out=out, overwrite=True,
                      model=lstmgen.ModelConfig(embedding_dim=64, units=128),
                      max_steps=steps, batch_size=64, seq_len=128, val_tokens=100_000,
                      sample_length=0, checkpoint_every=10**6, verbose=0)
        ended = time.perf_counter()
    training = ended - (pipeline["first"] or ended)
    return {"seconds": ended - started, "training_s": training,
            "pipeline_s": pipeline["seconds"], "batches": pipeline["batches"],
            "pipeline_share": pipeline["seconds"] / training if training else 0.0,
            "base_rss": base.get("VmRSS", 0), "peak_anon": sampler.peak,
            "peak_file": sampler.peak_file, **proc_status()}


def run_child(*args: str) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", *args],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the parent ----------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 MB vs 200 MB, 100 steps")
    parser.add_argument("--huge", action="store_true", help="100 MB vs 10 GB")
    parser.add_argument("--encode-only", action="store_true", help="skip the training runs")
    parser.add_argument("--steps", type=int, default=None, help="training steps (300)")
    parser.add_argument("--tmp", default=None, help="folder for the corpora (default: $TMPDIR)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "encode":
            print(json.dumps(child_encode(*rest)))
        else:
            print(json.dumps(child_train(rest[0], rest[1], int(rest[2]))))
        return

    header("bench_streaming: encode speed and memory vs corpus size")
    mb = 10**6
    sizes = ([20 * mb, 200 * mb] if args.quick else
             [100 * mb, 10_000 * mb] if args.huge else [100 * mb, 1000 * mb])
    steps = args.steps or (100 if args.quick else 300)
    tmp = Path(tempfile.mkdtemp(prefix="lstmgen-bench-", dir=args.tmp))
    try:
        english = source_lines(ENGLISH)
        corpora = []
        for size in sizes:
            path = tmp / f"english_{size // mb}MB.txt"
            started = time.perf_counter()
            write_corpus(path, size, english)
            print(f"wrote {path.name} ({os.path.getsize(path) / mb:,.0f} MB) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            corpora.append(path)
        non_latin = tmp / f"non_latin_{sizes[0] // mb}MB.txt"
        write_corpus(non_latin, sizes[0], source_lines(NON_LATIN))

        print("\nencoding (char tokenizer; fit + encode, two streaming passes; "
              "fresh process each)")
        print(f"{'corpus':24s} {'MB':>7s} {'seconds':>8s} {'MB/s':>7s} {'CPU MB/s':>8s} "
              f"{'peak RSS':>10s} "
              f"{'peak anon':>10s} {'after import':>12s}")
        encoded = {}
        for path in [*corpora, non_latin]:
            r = run_child("encode", str(path), str(tmp / f"enc_{path.stem}"))
            encoded[path] = r
            print(f"{path.stem:24s} {os.path.getsize(path) / mb:7,.0f} {r['seconds']:8.1f} "
                  f"{r['mb_per_s']:7.1f} {r['cpu_mb_per_s']:8.1f} "
                  f"{mib(r['VmHWM']):>10s} {mib(r['peak_anon']):>10s} "
                  f"{mib(r['base_rss']):>12s}", flush=True)
            shutil.rmtree(tmp / f"enc_{path.stem}", ignore_errors=True)

        if args.encode_only:
            print(f"\nend: {load()}")
            return
        print(f"\ntraining {steps} steps (LSTM 128, batch 64 x 128, windows read by pread; "
              "includes encoding; fresh process each)")
        print(f"{'corpus':24s} {'seconds':>8s} {'peak RSS':>10s} {'peak anon':>10s} "
              f"{'peak file':>10s} {'train s':>8s} {'input s':>8s} {'input %':>8s}")
        trained = {}
        for path in corpora[:2]:
            r = run_child("train", str(path), str(tmp / f"run_{path.stem}"), str(steps))
            trained[path] = r
            print(f"{path.stem:24s} {r['seconds']:8.1f} {mib(r['VmHWM']):>10s} "
                  f"{mib(r['peak_anon']):>10s} {mib(r['peak_file']):>10s} "
                  f"{r['training_s']:8.1f} {r['pipeline_s']:8.2f} "
                  f"{100 * r['pipeline_share']:7.2f}%", flush=True)
            shutil.rmtree(tmp / f"run_{path.stem}", ignore_errors=True)

        small, large = corpora[0], corpora[1]
        ratio = os.path.getsize(large) / os.path.getsize(small)
        print(f"\nratios, large / small corpus ({ratio:.0f}x the text):")
        for what, table in (("encode", encoded), ("train", trained)):
            for key in ("VmHWM", "peak_anon", "peak_file"):
                print(f"  {what:6s} {key:9s} {table[large][key] / table[small][key]:.3f}")
        wall = min(encoded[p]["mb_per_s"] for p in corpora)
        cpu = min(encoded[p]["cpu_mb_per_s"] for p in corpora)
        print(f"  slowest English encode: {wall:.0f} MB/s wall-clock, {cpu:.0f} MB/s per CPU "
              "second (target >= 100 on one core)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nend: {load()}")


if __name__ == "__main__":
    main()
