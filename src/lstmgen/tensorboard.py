"""TensorBoard logs of the training metrics, written with tensorboardX (Keras' own TensorBoard
callback needs TensorFlow, which lstmgen does not install)."""

from __future__ import annotations

import os

from lstmgen.errors import LstmgenError


class TensorBoardLogger:
    """Writes each metrics row as scalars under ``logs_dir``; view with
    ``tensorboard --logdir RUN/logs``.

    Example:
        >>> logger = TensorBoardLogger("/tmp/tb")                     # doctest: +SKIP
        >>> logger.log({"step": 10, "val_loss": 1.7})                 # doctest: +SKIP
    """

    def __init__(self, logs_dir: str | os.PathLike):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise LstmgenError("--tensorboard needs the tensorboardX package",
                               hint="pip install 'lstmgen[tensorboard]'") from None
        self.writer = SummaryWriter(os.fspath(logs_dir))

    def log(self, row: dict) -> None:
        step = int(row["step"])
        for key, value in row.items():
            if key != "step" and value is not None:
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
