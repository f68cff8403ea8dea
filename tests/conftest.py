"""Shared fixtures: the real corpora in ../shared/data (tests skip when absent) and one small
model trained once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tiny_shakespeare" / "input.txt"


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared corpus {path} is not available")
    return path


def set_random_start(lm, seed: int = 0) -> None:
    """Give ``lm`` a random learned start state (it starts at zeros, which would hide a path
    that ignores it)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for variable in lm.start.starts:
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))


@pytest.fixture(autouse=True)
def _same_random_draws_in_any_order():
    """Seed Keras, NumPy and `random` before every test: its random draws (a layer's initial
    weights) must not depend on which tests ran before it in this process, or a tolerance that
    holds in one run can fail in another (it did, in CI, on a standalone test_layers.py run)."""
    import keras

    keras.utils.set_random_seed(0)


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    return shared_file("tiny_shakespeare", "input.txt")


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """A text file of about 60 KB: tiny-shakespeare's start when present, else generated."""
    path = tmp_path_factory.mktemp("text") / "small.txt"
    if SHAKESPEARE.is_file():
        text = SHAKESPEARE.read_text(encoding="utf-8")[:60_000]
        path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    else:
        line = "the quick brown fox jumps over the lazy dog, again and again.\n"
        path.write_text(line * 1000, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, small_text):
    """A tiny char model trained for a few steps; returns (TrainedModel, run path)."""
    import lstmgen

    out = tmp_path_factory.mktemp("runs") / "tiny"
    model = lstmgen.train(
        small_text, out=out, model=lstmgen.ModelConfig(units=32, embedding_dim=16),
        batch_size=16, seq_len=32, max_steps=30, checkpoint_every=10, sample_length=20,
        verbose=0,
    )
    return model, out
