import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

import lstmgen
from lstmgen.cli import main

COMMANDS = ("train", "generate", "evaluate", "info", "demo", "serve")


def run_cli(*args, timeout=300, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "lstmgen.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env, **kw)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"lstmgen {command}" in out


def test_generate_streams_prime_and_is_reproducible(trained_run):
    _, out = trained_run
    first = run_cli("generate", out, "--prime", "ROMEO:", "--length", "40", "--seed", "5")
    second = run_cli("generate", out, "--prime", "ROMEO:", "--length", "40", "--seed", "5")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("ROMEO:") and len(first.stdout) == len("ROMEO:") + 41


def test_generate_several_samples_and_unknown_prime_characters(trained_run):
    _, out = trained_run
    result = run_cli("generate", out, "--prime", "Zwölf Boxkämpfer ☃", "--length", "10",
                     "--num-samples", "3", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("=== sample") == 3
    assert "warning:" in result.stderr and "Traceback" not in result.stderr


GENERATE_AND_REPORT = """
import json, sys
import jax.monitoring
from lstmgen.cli import main

events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
code = main(["generate", sys.argv[1], "--length", "30", "--seed", "3"], fresh_process=True)
print(json.dumps({"code": code, "misses": events.count("/jax/compilation_cache/cache_misses"),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "skipped": [sys.modules.get(m, 0) is None for m in ("IPython", "matplotlib")]}))
"""


def test_generate_second_start_compiles_nothing_and_skips_unused_imports(trained_run,
                                                                         tmp_path):
    # The first character's latency: a second `lstmgen generate` loads every XLA program
    # from the cache and never imports what Keras would pull in for notebooks and plots.
    _, out = trained_run
    env = {**os.environ, "LSTMGEN_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", GENERATE_AND_REPORT, str(out)],
                                capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        *text, report = result.stdout.splitlines()
        runs.append((text, json.loads(report)))
    (first_text, first), (second_text, second) = runs
    assert first["code"] == second["code"] == 0 and first_text == second_text
    assert first["misses"] > 0 and second["misses"] == 0 and second["hits"] > 0
    assert second["skipped"] == [True, True]


def test_evaluate_and_info(trained_run, small_text):
    _, out = trained_run
    result = run_cli("evaluate", out, small_text, "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["tokens"] == len(small_text.read_text(encoding="utf-8")) - 1
    model = lstmgen.load(out)
    # one character per token: bits/char is the loss in bits, and training beat chance
    assert figures["bits_per_char"] == pytest.approx(figures["loss"] / math.log(2))
    assert figures["loss"] < math.log(model.tokenizer.vocab_size) - 0.5
    assert figures["loss"] == pytest.approx(model.evaluate(small_text).loss, rel=1e-6)
    assert figures["fresh_start"] > figures["loss"] and figures["fresh_start_window"] == 8
    assert figures["fresh_tokens"] == 8 * (1 + (figures["tokens"] - 8) // 64)
    text = run_cli("evaluate", out, small_text)
    assert f"fresh start     {figures['fresh_start']:.4f} nats/token" in text.stdout
    reset = run_cli("evaluate", out, small_text, "--json", "--reset-state")
    assert reset.returncode == 0, reset.stderr
    assert json.loads(reset.stdout)["tokens"] == figures["tokens"]
    assert json.loads(reset.stdout)["loss"] != figures["loss"]
    info = run_cli("info", out)
    assert info.returncode == 0, info.stderr
    state = model.state
    assert f"parameters      {model.lm.count_params():,}" in info.stdout
    assert f"best validation {state['best_val_loss']:.4f} nats/token" in info.stdout
    assert f"fresh start   {state['best_val_fresh_start']:.4f}" in info.stdout
    as_json = json.loads(run_cli("info", out, "--json").stdout)
    assert as_json["step"] == lstmgen.load(out).state["step"] == 30
    assert as_json["best_val_fresh_start"] == state["best_val_fresh_start"]


@pytest.mark.parametrize("args, message", [
    (["generate", "/no/such/run"], "no run folder"),
    (["generate", "RUN", "--temperature", "-1"], "temperature must be >= 0"),
    (["generate", "RUN", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["generate", "RUN", "--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["generate", "RUN", "--min-p", "1.5"], "min_p must be in [0, 1]"),
    (["generate", "RUN", "--min-p", "-0.1"], "min_p must be in [0, 1]"),
    (["generate", "RUN", "--stop", ""], "a stop sequence is empty"),
    (["generate", "RUN", "--repetition-penalty", "0"], "repetition_penalty must be > 0"),
    (["generate", "RUN", "--prime-file", "EMPTY"], "has no primes"),
    (["generate", "RUN", "--prime-file", "LATIN1"], "cannot read the prime file"),
    (["generate", "RUN", "--interactive", "--num-samples", "2"], "one conversation"),
    (["evaluate", "RUN", "/no/such/file.txt"], "no such file or folder"),
    (["train", "/no/such/file.txt", "--out", "OUT"], "no such file or folder"),
    (["train", "EMPTY", "--out", "OUT"], "empty"),
    (["train", "BINARY", "--out", "OUT"], "is not text: NUL byte"),
    (["train", "LATIN1", "--out", "OUT"], "not valid UTF-8 at byte offset 3"),
    (["train", "SHORT", "--out", "OUT"], "fewer than one sequence"),
    (["train", "SHORT", "--out", "OUT", "--dropout", "1.5"], "dropout must be in [0, 1)"),
    (["train", "--resume", "/no/such/run"], "no run folder"),
    (["info", "NOTARUN"], "not an lstmgen run folder"),
])
def test_bad_input_gives_one_line_error_and_exit_1(args, message, trained_run, tmp_path,
                                                   capsys):
    _, run = trained_run
    files = {"RUN": run, "OUT": tmp_path / "out", "EMPTY": tmp_path / "empty.txt",
             "BINARY": tmp_path / "b.dat", "LATIN1": tmp_path / "l.txt",
             "SHORT": tmp_path / "s.txt", "NOTARUN": tmp_path}
    files["EMPTY"].write_text("")
    files["BINARY"].write_bytes(b"\x7fELF\0\0\1")
    files["LATIN1"].write_bytes("abcé def\n".encode("latin-1"))
    files["SHORT"].write_text("too short\n")
    code = main([str(files.get(a, a)) for a in args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert message in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("args", [["generate", "RUN", "--length", "-3"],
                                  ["train", "x", "--batch-size", "0"],
                                  ["train", "x", "--seq-len", "-1"],
                                  ["train", "x", "--units", "0"],
                                  ["frobnicate"]])
def test_usage_errors_exit_2(args, trained_run, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(trained_run[1]) if a == "RUN" else a for a in args])
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_damaged_checkpoint_and_config_are_reported(trained_run, tmp_path, capsys):
    import shutil

    _, run = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "best.weights.h5").write_bytes(b"garbage")
    assert main(["generate", str(copy), "--length", "5"]) == 1
    assert "damaged" in capsys.readouterr().err
    config = json.loads((copy / "config.json").read_text())
    config["format_version"] = 99
    (copy / "config.json").write_text(json.dumps(config))
    assert main(["info", str(copy)]) == 1
    assert "format 99" in capsys.readouterr().err


def test_sigkill_mid_training_loses_at_most_one_checkpoint_interval(tmp_path, small_text):
    out = tmp_path / "run"
    args = ["train", small_text, "--out", out, "--units", "32", "--embedding-dim", "16",
            "--batch-size", "8", "--seq-len", "32", "--epochs", "50", "--checkpoint-every",
            "5", "--sample-length", "0", "--carry-state", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "lstmgen.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.weights.h5"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if last.is_file() and lstmgen.run.Run(out).has_checkpoint("last"):
                from lstmgen.checkpoint import read_state

                try:
                    if read_state(last)["step"] >= 15:
                        break
                except lstmgen.LstmgenError:
                    pass  # between os.replace and our read: try again
            time.sleep(0.2)
        else:
            pytest.fail("training made no checkpoint in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = lstmgen.load(out, checkpoint="last").state
    assert state["step"] >= 15 and state["step"] % 5 == 0
    # What atomic writes promise: every file present is whole — each checkpoint loads, the
    # config and metrics parse — whatever moment the kill came.
    for which in ("last", "best"):
        if (out / "checkpoints" / f"{which}.weights.h5").is_file():
            assert lstmgen.load(out, checkpoint=which).lm.count_params() > 0
    json.loads((out / "config.json").read_text())
    json.loads((out / "tokenizer.json").read_text())
    if (out / "metrics.csv").is_file():
        assert all(r["step"] for r in csv.DictReader(open(out / "metrics.csv")))
    (out / "checkpoints" / ".last.weights.h5.abc.tmp.weights.h5").write_bytes(b"half a file")
    assert json.loads((out / "config.json").read_text())["train"]["carry_state"] is True
    refused = run_cli("train", "--resume", out, "--no-carry-state", "-q")
    assert refused.returncode == 1 and "cannot change carry_state" in refused.stderr
    result = run_cli("train", "--resume", out, "--max-steps", state["step"] + 5, "-q")
    assert result.returncode == 0, result.stderr
    assert lstmgen.load(out, checkpoint="last").state["step"] == state["step"] + 5
    assert not list(out.rglob(".*.tmp*"))  # what a killed writer left is cleaned on resume


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, small_text):
    out = tmp_path / "run"
    args = ["train", small_text, "--out", out, "--units", "32", "--embedding-dim", "16",
            "--batch-size", "8", "--seq-len", "32", "--epochs", "50", "--checkpoint-every",
            "100000", "--sample-length", "0", "--eval-every", "3"]
    proc = subprocess.Popen([sys.executable, "-m", "lstmgen.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (out / "metrics.csv").is_file():
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    assert lstmgen.load(out, checkpoint="last").state["step"] >= 3


def test_prime_file_and_last_checkpoint(trained_run, tmp_path):
    model, out = trained_run
    prime_file = tmp_path / "primes.txt"
    prime_file.write_text("ROMEO:\n\nWhat\n", encoding="utf-8")  # one prime per line
    from_file = run_cli("generate", out, "--prime-file", prime_file, "--length", "30",
                        "--seed", "2", "--checkpoint", "last")
    assert from_file.returncode == 0, from_file.stderr
    expected = lstmgen.load(out, checkpoint="last").generate(["ROMEO:", "What"], 30, seed=2,
                                                              temperature=0.8)
    assert from_file.stdout == (f"=== sample 1 ===\nROMEO:{expected[0]}\n"
                                f"=== sample 2 ===\nWhat{expected[1]}\n")
    missing = run_cli("generate", out, "--prime-file", tmp_path / "nope.txt")
    assert missing.returncode == 1 and "cannot read the prime file" in missing.stderr


def test_several_primes_samples_and_stop_sequences(trained_run, capsys):
    model, out = trained_run
    code = main(["generate", str(out), "--prime", "the ", "--prime", "First", "--num-samples",
                 "2", "--length", "80", "--seed", "4", "--stop", "\\n", "--stop", "e",
                 "--repetition-penalty", "1.3"])
    printed = capsys.readouterr().out
    assert code == 0
    primes = ["the ", "the ", "First", "First"]
    texts = model.generate(primes, 80, seed=4, temperature=0.8, stop=["\n", "e"],
                           repetition_penalty=1.3)
    assert printed == "".join(f"=== sample {i + 1} ===\n{p}{t}\n"
                              for i, (p, t) in enumerate(zip(primes, texts)))
    assert any(len(t) < 80 for t in texts)  # the stops did end samples


def test_output_to_a_file_as_json_lines_or_text(trained_run, tmp_path, capsys):
    model, out = trained_run
    target = tmp_path / "samples.jsonl"
    args = ["generate", str(out), "--prime", "A", "--num-samples", "3", "--length", "20",
            "--stop", "e"]
    assert main([*args, "--output", str(target)]) == 0
    assert capsys.readouterr().out == ""
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [r["sample"] for r in rows] == [1, 2, 3] and {r["prime"] for r in rows} == {"A"}
    seed = rows[0]["seed"]  # drawn at random, and recorded so the samples can be remade
    assert [r["text"] for r in rows] == model.generate("A", 20, seed=seed, temperature=0.8,
                                                       stop="e", num_samples=3)
    assert rows[0]["settings"]["stop"] == ["e"] and rows[0]["settings"]["length"] == 20
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(r["finish_reason"] == "length" or "e" not in r["text"] for r in rows)
    text_file = tmp_path / "one.txt"
    assert main(["generate", str(out), "--prime", "A", "--length", "20", "--seed", "9",
                 "--output", str(text_file)]) == 0
    expected = model.generate("A", 20, seed=9, temperature=0.8)[0]
    assert text_file.read_text(encoding="utf-8") == f"A{expected}\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    code = main(["generate", str(out), "--output", str(target / "x.txt")])  # under a file
    assert code == 1 and "cannot write" in capsys.readouterr().err


def test_interactive_session_in_a_pipe(trained_run):
    model, out = trained_run
    result = run_cli("generate", out, "--interactive", "--length", "25", "--seed", "6",
                     "--stop", "\\n\\n", input="First Citizen:\nMENENIUS:\n")
    assert result.returncode == 0, result.stderr
    chat = model.session(seed=6, temperature=0.8, stop="\n\n")
    expected = ""
    for line in ("First Citizen:", "MENENIUS:"):
        chat.feed(line)
        reply = "".join(chat.reply(25))
        expected += line + reply
        if not reply.endswith("\n"):
            chat.feed("\n")
            expected += "\n"
    assert result.stdout == expected
    assert "Traceback" not in result.stderr


def test_resume_a_finished_run_with_more_epochs_and_fine_tune_from_it(tmp_path, small_text):
    out = tmp_path / "run"
    base = ["--units", "16", "--embedding-dim", "8", "--batch-size", "8", "--seq-len", "32",
            "--sample-length", "0", "-q"]
    first = run_cli("train", small_text, "--out", out, "--epochs", "1", "--no-learned-start",
                    "--first-epoch-reset", "0.2", "--weight-drop", "0.1", "--layer-norm",
                    *base)
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "config.json").read_text())["train"]["first_epoch_reset"] == 0.2
    assert json.loads((out / "config.json").read_text())["model"]["weight_drop"] == 0.1
    assert json.loads((out / "config.json").read_text())["model"]["layer_norm"] is True
    # Streams start from zeros, as in runs made before the learned start: it still generates.
    assert json.loads((out / "config.json").read_text())["model"]["learned_start"] is False
    assert lstmgen.load(out).lm.start is None and len(lstmgen.load(out).generate("a", 5)[0]) == 5
    one = lstmgen.load(out, checkpoint="last").state
    assert one["finished"] and one["epoch"] == 1
    more = run_cli("train", "--resume", out, "--epochs", "2", "-q")  # the README's example
    assert more.returncode == 0, more.stderr
    two = lstmgen.load(out, checkpoint="last").state
    assert two["epoch"] == 2 and two["step"] == 2 * one["step"]
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 2
    tuned = tmp_path / "tuned"
    fine = run_cli("train", small_text, "--from", out, "--out", tuned, "--max-steps", "2", "-q")
    assert fine.returncode == 0, fine.stderr
    assert (tuned / "tokenizer.json").read_text() == (out / "tokenizer.json").read_text()
    tuned_config = json.loads((tuned / "config.json").read_text())
    assert tuned_config["corpus"]["init_from"] == str(out)
    assert tuned_config["model"]["learned_start"] is False  # the base model's layers


def test_demo_end_to_end_with_a_short_budget(tmp_path):
    result = run_cli("demo", "--out", tmp_path / "demo", "--max-time", "20", timeout=400)
    assert result.returncode == 0, result.stderr
    assert "fresh start (first 8 tokens)" in result.stdout
    for prime in ("def ", "class ", "import "):
        assert f"=== sample (prime {prime!r}, temperature 0.6) ===\n{prime}" in result.stdout
    demo = lstmgen.load(tmp_path / "demo")
    assert demo.info()["step"] > 0
    # Why the demo trains subwords: a character model of its size fell into runs of 200-300
    # spaces at its temperature. Here an indentation, however deep, is one token.
    tokenizer = demo.tokenizer
    for depth in (4, 8, 12, 16, 24):
        pieces = [tokenizer.decode([i]) for i in tokenizer.encode(f"\n{' ' * depth}return x\n")]
        assert sum(p.strip() == "" and " " in p for p in pieces) == 1, (depth, pieces)
