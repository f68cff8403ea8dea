import os
import subprocess
import sys

import pytest

from lstmgen import cli, hugepages

ON_MADVISE = (hugepages.kernel_policy() == "madvise"
              and hugepages.needed({}, policy="madvise"))


def test_reads_the_kernels_policy(tmp_path):
    policy = tmp_path / "enabled"
    policy.write_text("always [madvise] never\n")
    assert hugepages.kernel_policy(str(policy)) == "madvise"
    policy.write_text("[always] madvise never\n")
    assert hugepages.kernel_policy(str(policy)) == "always"
    assert hugepages.kernel_policy(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not hugepages._glibc_has_tunable() or not sys.platform.startswith("linux"),
                    reason="needs Linux with glibc 2.35+")
def test_needed_only_where_it_would_change_something():
    assert hugepages.needed({}, policy="madvise")
    assert hugepages.needed({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, policy="madvise")
    assert not hugepages.needed({"GLIBC_TUNABLES": hugepages.TUNABLE}, policy="madvise")
    assert not hugepages.needed({"GLIBC_TUNABLES": "a=1:" + hugepages.TUNABLE}, "madvise")
    assert not hugepages.needed({"LSTMGEN_HUGEPAGES": "0"}, policy="madvise")
    for policy in ("always", "never", None):
        assert not hugepages.needed({}, policy=policy or "")


def test_with_tunable_keeps_other_tunables():
    assert hugepages.with_tunable({})["GLIBC_TUNABLES"] == hugepages.TUNABLE
    env = hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + hugepages.TUNABLE, "X": "1"}


def child_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", hugepages.SWITCH)}
    env.update(extra)
    return env


@pytest.mark.skipif(not ON_MADVISE, reason="needs glibc 2.35+ and the kernel's THP on madvise")
def test_restart_runs_the_same_process_again_with_the_tunable():
    code = ("import os, sys; print('start', flush=True); "
            "from lstmgen.hugepages import restart_with_hugepages as r; r(); "
            "print(os.getpid(), os.environ['GLIBC_TUNABLES'], sys.argv[1:])")
    child = subprocess.run([sys.executable, "-c", code, "a", "--b"], capture_output=True,
                           text=True, env=child_env(), timeout=60)
    lines = child.stdout.split("\n")
    assert lines[:2] == ["start", "start"]  # ran twice, in one process:
    pid, tunables, args = lines[2].split(" ", 2)
    assert tunables == hugepages.TUNABLE and args == "['a', '--b']"
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(LSTMGEN_HUGEPAGES="0"), timeout=60)
    assert off.stdout.count("start") == 1 and "KeyError" in off.stderr


@pytest.mark.skipif(not ON_MADVISE, reason="needs glibc 2.35+ and the kernel's THP on madvise")
def test_xla_buffers_fault_far_fewer_pages():
    # Each call allocates a fresh 64 MiB output buffer: 16,384 faults of 4 KiB pages.
    code = ("import resource, jax, jax.numpy as jnp\n"
            "f = jax.jit(lambda x: x * 2.0); x = jnp.ones((4096, 4096))\n"
            "f(x).block_until_ready()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(5): f(x).block_until_ready()\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for name, env in (("plain", child_env()), ("huge", hugepages.with_tunable(child_env()))):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120)
        faults[name] = int(out.stdout.split()[-1])
    assert faults["plain"] > 50_000
    assert faults["huge"] < faults["plain"] / 10


@pytest.mark.parametrize("command, restarts", [("train", True), ("evaluate", True),
                                               ("demo", True), ("generate", False)])
def test_the_cli_restarts_for_training_and_evaluation(monkeypatch, command, restarts):
    calls = []
    monkeypatch.setattr(hugepages, "restart_with_hugepages", lambda: calls.append(1))
    monkeypatch.setattr(cli, "main", lambda fresh_process: 0)
    monkeypatch.setattr(sys, "argv", ["lstmgen", command, "x"])
    with pytest.raises(SystemExit):
        cli.entry_point()
    assert bool(calls) == restarts
