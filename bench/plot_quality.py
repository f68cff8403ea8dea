"""Plot validation loss against minutes from saved ``bench_quality.py`` outputs or
``lstmgen train`` logs (a first line ``# lstmgen train ...``, then the run's metrics.csv),
with nanoGPT's CPU baby-GPT reference points from the issue.

    python bench/bench_quality.py --budget 1800 > d.txt
    python bench/plot_quality.py d.txt other.txt --out bench/quality_curves.png
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import NANOGPT_CPU  # noqa: E402

ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.na]+)\s*$")


def cli_curve(text: str) -> tuple[str, list[tuple[float, float]]] | None:
    """The curve of an ``lstmgen train`` log: its command (without the shared part) and
    its metrics rows."""
    command = re.match(r"# lstmgen train train\.txt --val val\.txt (.*?)(?:,|$)", text)
    start = text.find("step,epoch,elapsed_s")
    if not command or start < 0:
        return None
    rows = csv.DictReader(text[start:].split("\n\n")[0].splitlines())
    return command[1], [(float(r["elapsed_s"]) / 60, float(r["val_loss"])) for r in rows]


def curve(path: Path) -> tuple[str, list[tuple[float, float]]]:
    text = path.read_text(encoding="utf-8")
    cli = cli_curve(text)
    if cli:
        return cli
    model = re.search(r"units=(\d+).*?dropout=([\d.]+)", text)
    if not model:
        return path.stem, points_of(text)
    label = f"LSTM {model[1]}, dropout {model[2]}"
    recurrent = re.search(r"recurrent_dropout=([\d.]+)", text)
    if recurrent and float(recurrent[1]):
        label += f", recurrent {recurrent[1]}"
    label += ", state carried" if "'carry_state': True" in text else ""
    if "stock LSTM layer=False" in text:  # logs from before FusedLSTM was the default say nothing
        label += ", FusedLSTM"
    label += ", huge pages" if "glibc.malloc.hugetlb=1" in text else ""
    label += ", embedding lookup" if "probe run" in text else ""  # logs since the lookup
    budget = re.search(r"'max_time': ([\d.]+)", text)
    if budget:  # since 'schedule_steps' is set, training runs on to the budget
        label += f" ({float(budget[1]) / 60:.0f}-min " + (
            "budget, trained to the end)" if "'schedule_steps'" in text else "schedule)")
    return label, points_of(text)


def points_of(text: str) -> list[tuple[float, float]]:
    return [(float(m[3]) / 60, float(m[4])) for m in map(ROW.match, text.splitlines()) if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outputs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("quality_curves.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for path in args.outputs:
        label, points = curve(path)
        ax.plot(*zip(*points), marker=".", label=f"lstmgen: {label}")
    ax.plot([t / 60 for t, _ in NANOGPT_CPU], [v for _, v in NANOGPT_CPU], "ks--",
            label="nanoGPT CPU baby-GPT (issue's reference)")
    for target, until in ((1.43, 10), (1.40, 30)):  # issue 16's
        ax.hlines(target, 0, until, colors="grey", linestyles=":")
    ax.set(xlabel="minutes of training (2 CPU cores)", ylabel="validation loss (nats/char)",
           title="tiny-shakespeare, nanoGPT split", ylim=(1.38, 2.0))
    ax.grid(alpha=0.3)
    # Below the axes: the labels are long, and inside they hid the first minutes.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
