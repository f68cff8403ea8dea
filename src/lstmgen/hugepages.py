"""Huge pages for XLA's large temporary buffers: start the process again with glibc asked
for them.

XLA on the CPU allocates each large temporary (a training step's stacked activations and
gradients: tens of MiB each) with ``malloc``, which maps fresh 4 KiB pages for every one of
them: ~74,000 page faults per training step at LSTM 512, a fifth of the CPU time spent in the
kernel. glibc's tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35+) makes ``malloc`` ask the
kernel for transparent huge pages (2 MiB) where the kernel's policy is ``madvise``: the faults
drop ~100x and training runs ~10 % faster (``bench/RESULTS.md``). glibc reads tunables only
when a process starts, so the CLI's ``train``, ``evaluate`` and ``demo`` run themselves again
with it set (same process id, before anything is imported). ``LSTMGEN_HUGEPAGES=0`` turns
this off; a program using the Python API can set ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
itself.

Example:
    >>> with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"]
    'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_POLICY = "/sys/kernel/mm/transparent_hugepage/enabled"
SWITCH = "LSTMGEN_HUGEPAGES"


def kernel_policy(path: str = THP_POLICY) -> str | None:
    """The kernel's transparent-huge-page policy (``always``, ``madvise``, ``never``), or
    None where there is none to read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def _glibc_has_tunable() -> bool:
    libc, version = platform.libc_ver()
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return libc == "glibc" and (major, minor) >= (2, 35)


def needed(environ=None, policy: str | None = None) -> bool:
    """Whether a fresh start with :data:`TUNABLE` would give this process huge pages it does
    not already get: Linux with glibc 2.35+, the kernel's policy ``madvise`` (with
    ``always`` every large mapping gets them anyway), not set already, not switched off."""
    environ = os.environ if environ is None else environ
    policy = kernel_policy() if policy is None else policy
    return (
        sys.platform.startswith("linux")
        and environ.get(SWITCH, "1") != "0"
        and TUNABLE not in environ.get("GLIBC_TUNABLES", "").split(":")
        and policy == "madvise"
        and _glibc_has_tunable()
    )


def with_tunable(environ) -> dict:
    """A copy of ``environ`` with :data:`TUNABLE` added to ``GLIBC_TUNABLES``."""
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), TUNABLE]))
    return env


def restart_with_hugepages() -> None:
    """Replace this process by the same command line with :data:`TUNABLE` set, when
    :func:`needed`; otherwise return. Call it first thing, before any work is done."""
    if not needed():
        return
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, with_tunable(os.environ))
    except OSError:  # can't start it again: run on without
        pass
