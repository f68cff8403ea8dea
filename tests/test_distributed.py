import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lstmgen
from lstmgen.distributed import DistributedConfig, free_port
from lstmgen.errors import LstmgenError

WORKER = Path(__file__).with_name("distributed_worker.py")


def start(*args, mode="plain"):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "LSTMGEN_TEST_MODE": mode}
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs, timeout=300):
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # stragglers are killed by PID
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


@pytest.mark.parametrize("mode", ["plain", "carry", "words"])
def test_two_processes_match_one_process_with_two_devices(tmp_path, small_text, mode):
    single = start(small_text, tmp_path / "single", tmp_path / "single.npz", 2, mode=mode)
    finish([single])
    port = free_port()
    pair = [start(small_text, tmp_path / "pair", tmp_path / f"p{i}.npz", 1,
                  f"127.0.0.1:{port}", 2, i, mode=mode) for i in range(2)]
    finish(pair)
    one, p0, p1 = (np.load(tmp_path / f"{n}.npz") for n in ("single", "p0", "p1"))
    np.testing.assert_array_equal(p0["weights"], p1["weights"])
    np.testing.assert_array_equal(p0["weights"], one["weights"])
    # Each process read its own half of every global batch: disjoint, together the whole.
    assert len(p0["seen"]) == len(p1["seen"]) == 12 * 4
    assert not set(p0["seen"]) & set(p1["seen"])
    assert sorted([*p0["seen"], *p1["seen"]]) == sorted(one["seen"])
    # Only process 0 wrote; the run folder resumes and generates like any other.
    state = lstmgen.load(tmp_path / "pair", checkpoint="last").state
    assert state["step"] == 12
    assert not list((tmp_path / "pair").rglob("*.tmp*"))


def test_two_processes_size_a_time_budget_schedule_alike(tmp_path, small_text):
    """Each process measures its own step rate; they must agree on one schedule, or their
    replicas of the weights would drift apart silently."""
    port = free_port()
    pair = [start(small_text, tmp_path / "pair", tmp_path / f"p{i}.npz", 1,
                  f"127.0.0.1:{port}", 2, i, mode="time") for i in range(2)]
    finish(pair)
    p0, p1 = (np.load(tmp_path / f"p{i}.npz") for i in range(2))
    np.testing.assert_array_equal(p0["weights"], p1["weights"])
    state = lstmgen.load(tmp_path / "pair", checkpoint="last").state
    assert state["stop_reason"] == "time budget reached"
    assert 5 <= state["schedule_hold"] < state["schedule_steps"]


def test_configuration_errors(monkeypatch):
    with pytest.raises(LstmgenError, match="coordinator HOST:PORT"):
        DistributedConfig(num_processes=2, process_id=0).validate()
    with pytest.raises(LstmgenError, match="process-id must be in"):
        DistributedConfig(num_processes=2, process_id=2, coordinator="h:1").validate()
    monkeypatch.setenv("LSTMGEN_NUM_PROCESSES", "4")
    monkeypatch.setenv("LSTMGEN_PROCESS_ID", "3")
    monkeypatch.setenv("LSTMGEN_COORDINATOR", "node0:4000")
    config = DistributedConfig().with_environment().validate()
    assert (config.num_processes, config.process_id, config.coordinator) == (4, 3, "node0:4000")
    assert not config.is_chief


def test_cli_launches_local_processes(tmp_path, small_text):
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "lstmgen.cli", "train", str(small_text), "--out", str(out),
         "--processes", "2", "--units", "16", "--embedding-dim", "8", "--batch-size", "8",
         "--seq-len", "16", "--max-steps", "4", "--sample-length", "10"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 devices in 2 process(es)" in result.stdout
    assert lstmgen.load(out, checkpoint="last").state["step"] == 4
    assert (out / "samples.txt").read_text().count("--- sample") == 1  # written once
    resumed = subprocess.run(
        [sys.executable, "-m", "lstmgen.cli", "train", "--resume", str(out), "--processes", "2",
         "--max-steps", "7", "-q"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert lstmgen.load(out, checkpoint="last").state["step"] == 7
