"""The loss curve: train and validation loss against steps and against wall-clock time."""

from __future__ import annotations

import os


def _column(rows: list[dict], key: str) -> tuple[list[float], list[float], list[float]]:
    steps, times, values = [], [], []
    for row in rows:
        value = row.get(key)
        if value in (None, ""):
            continue
        steps.append(float(row["step"]))
        times.append(float(row["elapsed_s"]) / 60)
        values.append(float(value))
    return steps, times, values


def plot_metrics(rows: list[dict], path: str | os.PathLike) -> None:
    """Write a PNG with two panels (loss vs step, loss vs minutes), atomically.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "loss.png"
        >>> rows = [{"step": 10, "elapsed_s": 5, "train_loss": 2.0, "val_loss": 2.1,
        ...          "val_fresh_start": 2.4}]
        >>> plot_metrics(rows, path)
        >>> path.read_bytes()[:4], [p.name for p in path.parent.iterdir()]  # a PNG, no temporary
        (b'\\x89PNG', ['loss.png'])
    """
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from lstmgen.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for key, label in (("train_loss", "train"), ("val_loss", "validation"),
                       ("val_fresh_start", "validation, fresh start (first 8 tokens)")):
        steps, minutes, values = _column(rows, key)
        axes[0].plot(steps, values, marker=".", label=label)
        axes[1].plot(minutes, values, marker=".", label=label)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("wall-clock minutes")
    for ax in axes:
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
