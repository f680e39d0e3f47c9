"""Loss curves and a summary table of training runs (the figure in docs/tiny-model/).

    python tools/training_curves.py runs/tiny-recon runs/tiny-gen runs/tiny-joint \
        -o docs/tiny-model/training.png

Reads each run's ``log.jsonl`` (one line per optimiser step) and plots a moving average of
every loss it logs, one panel per run; prints a markdown table (steps, seconds per step where
the log has times, mean losses over the first and the last 100 steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LOSSES = ("total", "diffusion", "recon", "recon_noisy", "recon_clean")


def read_log(run: Path) -> list[dict]:
    """The log's lines by step; a step logged twice (a run killed after logging it and resumed
    from an earlier checkpoint) keeps its last line."""
    rows = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"]] = row
    return [rows[k] for k in sorted(rows)]


def moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def seconds_per_step(rows: list[dict]) -> float | None:
    """Median time per step over the logged segments (a resumed run restarts its clock)."""
    deltas = [b["time"] - a["time"] for a, b in zip(rows, rows[1:]) if "time" in a and "time" in b and b["time"] > a["time"]]
    return sorted(deltas)[len(deltas) // 2] if deltas else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file")
    parser.add_argument("--window", type=int, default=100, help="moving-average window in steps")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.runs), figsize=(4.2 * len(args.runs), 3.2), dpi=120, squeeze=False)
    print("| run | steps | s/step | loss | first 100 | last 100 |\n|---|---:|---:|---|---:|---:|")
    for ax, run in zip(axes[0], args.runs):
        rows = read_log(run)
        steps = [r["step"] for r in rows]
        sps = seconds_per_step(rows)
        kept: list[list[float]] = []
        for key in LOSSES:
            values = [r[key] for r in rows] if key in rows[0] else None
            if values is None or values in kept:  # a loss equal to one already shown (e.g. total)
                continue
            kept.append(values)
            ax.plot(steps, moving_average(values, args.window), label=key, lw=1.2)
            head, tail = values[:100], values[-100:]
            print(f"| {run.name} | {steps[-1]} | {sps:.2f} | {key} | {sum(head) / len(head):.4f} | {sum(tail) / len(tail):.4f} |" if sps else
                  f"| {run.name} | {steps[-1]} | n/a | {key} | {sum(head) / len(head):.4f} | {sum(tail) / len(tail):.4f} |")
        ax.set_title(run.name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"loss ({args.window}-step moving average)")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output)


if __name__ == "__main__":
    main()
