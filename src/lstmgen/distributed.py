"""Data-parallel training over local devices, processes and hosts, on Keras' own distribution
API (``keras.distribution.DataParallel`` on the JAX backend: gloo collectives between CPU
processes, NCCL between GPUs).

Each process reads its own rows of every global batch from the shared token file; the global
batch size is the one the user set. Process 0 (the chief) encodes the corpus and writes
checkpoints, metrics and samples; every process can resume from them. The file system holding
the run folder must be shared by all processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from lstmgen.errors import LstmgenError

ENV = {"coordinator": "LSTMGEN_COORDINATOR", "num_processes": "LSTMGEN_NUM_PROCESSES",
       "process_id": "LSTMGEN_PROCESS_ID", "devices": "LSTMGEN_DEVICES"}


@dataclass
class DistributedConfig:
    """Where this process stands in a data-parallel job.

    ``devices``: local devices to use (on CPU, JAX splits the host into this many devices).
    ``coordinator``: ``HOST:PORT`` of process 0, for multi-process jobs. Unset fields are read
    from ``LSTMGEN_COORDINATOR``, ``LSTMGEN_NUM_PROCESSES``, ``LSTMGEN_PROCESS_ID`` and
    ``LSTMGEN_DEVICES``, so a cluster launcher (SLURM, a Kubernetes job) can set them.

    Example:
        >>> DistributedConfig(num_processes=2, process_id=1,
        ...                   coordinator="10.0.0.1:1234").validate().is_chief
        False
    """

    devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def with_environment(self) -> DistributedConfig:
        values = {}
        for field, var in ENV.items():
            value = getattr(self, field)
            if value is None and os.environ.get(var):
                raw = os.environ[var]
                try:
                    value = raw if field == "coordinator" else int(raw)
                except ValueError:
                    raise LstmgenError(f"{var}={raw!r} is not an integer") from None
            values[field] = value
        return DistributedConfig(**values)

    def validate(self) -> DistributedConfig:
        if self.devices is not None and self.devices < 1:
            raise LstmgenError(f"devices must be >= 1, got {self.devices}")
        n = self.num_processes or 1
        if n < 1:
            raise LstmgenError(f"num-processes must be >= 1, got {n}")
        if n > 1:
            if not self.coordinator or ":" not in self.coordinator:
                raise LstmgenError("a multi-process job needs --coordinator HOST:PORT",
                                   hint="the address of process 0, reachable by all")
            if self.process_id is None or not 0 <= self.process_id < n:
                raise LstmgenError(f"process-id must be in [0, {n}), got {self.process_id}")
        return self

    @property
    def multi_process(self) -> bool:
        return (self.num_processes or 1) > 1

    @property
    def is_chief(self) -> bool:
        return (self.process_id or 0) == 0


class Cluster:
    """The processes of a job as training sees them: who writes, and agreement on stopping."""

    def __init__(self, process_id: int = 0, num_processes: int = 1, num_devices: int = 1):
        self.process_id = process_id
        self.num_processes = num_processes
        self.num_devices = num_devices

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.process_id, self.num_processes

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any (a collective call)."""
        if self.num_processes == 1:
            return flag
        import numpy as np
        from jax.experimental import multihost_utils

        return bool(np.asarray(multihost_utils.process_allgather(np.array([flag]))).any())

    def min(self, value: float) -> float:
        """The smallest of ``value`` over the processes, on every process (a collective call).

        Example:
            >>> Cluster().min(3.5)
            3.5
        """
        if self.num_processes == 1:
            return value
        import numpy as np
        from jax.experimental import multihost_utils

        return float(np.asarray(multihost_utils.process_allgather(np.array([value]))).min())

    def barrier(self, name: str) -> None:
        if self.num_processes > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)


def setup(config: DistributedConfig | None) -> Cluster:
    """Start the distribution (before any JAX computation) and return this process's view."""
    config = (config or DistributedConfig()).with_environment().validate()
    if config.devices is None and not config.multi_process:
        return Cluster()
    import jax
    import keras

    try:
        if config.devices:
            jax.config.update("jax_num_cpu_devices", config.devices)
        if config.multi_process:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            keras.distribution.initialize(job_addresses=config.coordinator,
                                          num_processes=config.num_processes,
                                          process_id=config.process_id)
        devices = keras.distribution.list_devices()
    except RuntimeError as e:
        raise LstmgenError(f"cannot set up the distribution: {e}",
                           hint="call lstmgen.train(..., distributed=...) before any other "
                           "JAX work in this process") from None
    if len(devices) > 1:
        # Each process already feeds its own rows (WindowDataset shards): no auto-sharding.
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    return Cluster(jax.process_index(), jax.process_count(), len(devices))


def local(value):
    """A host copy of a variable value that spans several devices (or processes), so that
    single-device computations (evaluation, generation) can take it."""
    sharding = getattr(value, "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1:
        import numpy as np

        return np.asarray(value)
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(argv: list[str], processes: int) -> int:
    """Run ``lstmgen <argv>`` as ``processes`` local processes joined by a coordinator on a
    free 127.0.0.1 port. Ctrl-C is passed on to all of them; if one fails, the rest are
    stopped. Returns the first non-zero exit status (0 when all succeed)."""
    port = free_port()
    children = []
    for i in range(processes):
        env = {**os.environ, ENV["coordinator"]: f"127.0.0.1:{port}",
               ENV["num_processes"]: str(processes), ENV["process_id"]: str(i)}
        quiet = {} if i == 0 else {"stdout": subprocess.DEVNULL}
        children.append(subprocess.Popen([sys.executable, "-m", "lstmgen.cli", *argv],
                                         env=env, **quiet))
    previous = signal.signal(signal.SIGINT, lambda *_: [c.send_signal(signal.SIGINT)
                                                         for c in children])
    try:
        while any(c.poll() is None for c in children):
            if any(c.poll() not in (None, 0) for c in children):
                for c in children:
                    if c.poll() is None:
                        c.kill()
                break
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
        for c in children:
            if c.poll() is None:
                c.kill()
            c.wait()
    codes = [c.returncode for c in children]
    return next((code for code in codes if code), 0)
