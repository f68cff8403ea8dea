"""Checkpoints: one ``.weights.h5`` file holding the model weights, the optimizer state (Keras
saves it with the weights of a compiled model), the random-generator states of the dropout
layers (Keras does not save those) and the training state as JSON, written atomically so a
crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lstmgen import atomic
from lstmgen.errors import LstmgenError

STATE_GROUP = "lstmgen"


def save_checkpoint(model, path: str | os.PathLike, state: dict) -> None:
    """Write ``model`` (weights + optimizer) and ``state`` to ``path`` atomically."""
    import h5py

    with atomic.atomic_path(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp, overwrite=True)
        with h5py.File(tmp, "a") as f:
            group = f.require_group(STATE_GROUP)
            group.attrs["state"] = json.dumps(state)
            rng = group.require_group("non_trainable")
            for i, v in enumerate(_rng_states(model)):
                rng.create_dataset(str(i), data=np.asarray(v.value))


def read_state(path: str | os.PathLike) -> dict:
    """The training state stored in a checkpoint."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise LstmgenError(f"no checkpoint at {path}", hint="train first, or check the path")
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f[STATE_GROUP].attrs["state"])
    except (OSError, KeyError, ValueError) as e:
        raise LstmgenError(
            f"checkpoint {path} is damaged ({e})",
            hint="use the other checkpoint (best/last) or retrain",
        ) from None


def load_checkpoint(model, path: str | os.PathLike) -> dict:
    """Load weights (and optimizer state, when ``model`` is compiled) and return the state."""
    import warnings

    state = read_state(path)
    try:
        with warnings.catch_warnings():
            # An uncompiled model (generation) has no optimizer to restore: that is expected.
            warnings.filterwarnings("ignore", message=".*optimizer.*")
            warnings.filterwarnings("ignore", message=".*Skipping variable loading.*")
            model.load_weights(os.fspath(path))
        _load_non_trainable(model, path)
    except (OSError, ValueError, KeyError) as e:
        raise LstmgenError(
            f"checkpoint {path} does not fit this model ({e})",
            hint="the file is damaged or from another run; retrain or restore it",
        ) from None
    return state


def _load_non_trainable(model, path) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        saved = f[STATE_GROUP].get("non_trainable")
        if saved is None:
            return
        variables = _rng_states(model)
        if len(saved) != len(variables):
            raise ValueError("non-trainable state does not match the model")
        for i, v in enumerate(variables):
            v.assign(np.asarray(saved[str(i)]))


def _rng_states(model) -> list:
    """The dropout layers' random-generator states. Other non-trainable variables (the
    carried training states) are saved by Keras with their layer, so a checkpoint of either
    training model loads into the plain one."""
    return [v for v in model.non_trainable_variables if v.name == "seed_generator_state"]
