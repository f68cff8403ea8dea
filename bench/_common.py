"""Helpers shared by the benchmark scripts: timing, load, memory, the shared data folder."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def data_dir() -> Path | None:
    """The project's shared data folder (``../shared/data`` beside the repository), if any."""
    for candidate in (os.environ.get("LSTMGEN_DATA"), REPO.parent / "shared" / "data",
                      REPO / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def tiny_shakespeare() -> Path:
    folder = data_dir()
    path = folder / "tiny_shakespeare" / "input.txt" if folder else None
    if not path or not path.is_file():
        sys.exit("tiny-shakespeare not found: set LSTMGEN_DATA to the folder that holds "
                 "tiny_shakespeare/input.txt")
    return path


@contextlib.contextmanager
def lstm_layer(stock: bool):
    """Build lstmgen's models with Keras's own ``keras.layers.LSTM`` when ``stock``, instead
    of :class:`lstmgen.layers.FusedLSTM` (the default): the same weights, the stock loop."""
    import keras

    import lstmgen.layers

    fused = lstmgen.layers.FusedLSTM
    if stock:
        lstmgen.layers.FusedLSTM = keras.layers.LSTM
    try:
        yield
    finally:
        lstmgen.layers.FusedLSTM = fused


def hugepages(enabled: bool) -> None:
    """Run this benchmark as the CLI's ``train`` runs: started again with huge pages for
    XLA's buffers when ``enabled`` (see :mod:`lstmgen.hugepages`); the setting is printed by
    :func:`header`."""
    if enabled:
        from lstmgen.hugepages import restart_with_hugepages

        restart_with_hugepages()
    else:
        os.environ["LSTMGEN_HUGEPAGES"] = "0"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def header(title: str) -> None:
    import numpy

    print(f"== {title}")
    print(f"python {platform.python_version()}, numpy {numpy.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.machine()} ({cpu_model()}); {load()}")
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}", flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor()


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int, warmup: int = 1, settle: float = 0.0) -> dict:
    """Median seconds of each function, called in turn ``repeats`` times after ``warmup``
    calls each, so a burst of load hits every one alike; ``settle`` seconds of sleep before
    each call let the previous library's worker threads stop spinning (OpenMP, OpenBLAS and
    XLA's pools busy-wait for a while after a call)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(settle)
            started = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - started)
    return {name: statistics.median(v) for name, v in samples.items()}


def proc_status() -> dict[str, int]:
    """Memory figures of this process in bytes (Linux /proc; else peak RSS only)."""
    wanted = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
    try:
        with open("/proc/self/status") as f:
            rows = [line.split() for line in f if line.split(":")[0] in wanted]
        return {r[0].rstrip(":"): int(r[1]) * 1024 for r in rows}
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"VmHWM": peak if sys.platform == "darwin" else peak * 1024}


class PeakAnonSampler:
    """Samples resident memory every ``interval`` s in a thread: ``peak`` is the anonymous
    (heap) memory, ``peak_file`` the file-backed pages (libraries, and the pages of a
    ``np.memmap`` -- clean page cache that the kernel may drop at any time)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak = 0
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self):
        status = proc_status()
        self.peak = max(self.peak, status.get("RssAnon", 0))
        self.peak_file = max(self.peak_file, status.get("RssFile", 0))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"
