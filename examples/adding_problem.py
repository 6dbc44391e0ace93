"""Train derive's LSTM against the plain RNN on the adding problem, with gradient clipping.

    python examples/adding_problem.py                          # lstm vs rnn, T = 100, 2000 steps
    python examples/adding_problem.py lstm rnn my_cell.toml    # any cell (file) beside them
    python examples/adding_problem.py --steps 40 --length 20 --out /tmp/adding.png

The adding problem (Hochreiter & Schmidhuber 1997, experiment 4): each sequence has two
channels, a value uniform in [0, 1] and a marker that is 1 at exactly two steps (one in
the first half, one in the second) and 0 elsewhere; the target is the sum of the two
marked values. Predicting the mean (1.0) gives a mean squared error of 1/6 ≈ 0.167; a
model that learns the long dependency drives it towards 0. A prediction counts as
correct when it is within 0.04 of the target (the paper's criterion).

Each cell trains with torch.optim.Adam, the global gradient norm clipped with
torch.nn.utils.clip_grad_norm_ (its return value, the norm *before* clipping, is logged
per step, as the seed article recommends), under a tqdm progress bar; a PNG plot shows
loss and gradient norm per step for every cell. Needs `pip install "derive[examples]"`
(torch, tqdm, matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from tqdm import tqdm

import derive.torch as dt

TOLERANCE = 0.04


def adding_batch(batch: int, length: int, generator: torch.Generator):
    """(x (T, B, 2), target (B,)) of the adding problem."""
    values = torch.rand(length, batch, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    marker = torch.zeros(length, batch)
    rows = torch.arange(batch)
    marker[first, rows] = 1.0
    marker[second, rows] = 1.0
    target = values[first, rows] + values[second, rows]
    return torch.stack([values, marker], dim=2), target


class Regressor(torch.nn.Module):
    """A recurrent layer of `cell` and a linear read-out of its last output."""

    def __init__(self, cell: str, hidden: int):
        super().__init__()
        if cell == "lstm":
            self.rnn = dt.LSTM(2, hidden)
        elif cell == "rnn":
            self.rnn = dt.RNN(2, hidden)
        else:                                    # any shipped cell or cell file
            self.rnn = dt.Recurrent(cell, 2, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[-1]).squeeze(-1)


def train(cell: str, args, position: int = 0) -> dict:
    """Train one model; the loss and the gradient norm before clipping at every step."""
    torch.manual_seed(args.seed)
    model = Regressor(cell, args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(args.seed + 1)
    losses, norms = [], []
    t0 = time.perf_counter()
    bar = tqdm(range(args.steps), desc=f"{cell:>8}", position=position, leave=True,
               disable=args.quiet)
    for _ in bar:
        x, target = adding_batch(args.batch, args.length, data)
        loss = torch.nn.functional.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        losses.append(loss.item())
        norms.append(norm.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}", grad_norm=f"{norms[-1]:.3g}")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        x, target = adding_batch(1000, args.length, torch.Generator().manual_seed(args.seed + 2))
        error = model(x) - target
    return {"cell": cell, "loss": losses, "grad_norm": norms, "seconds": seconds,
            "test_mse": float((error ** 2).mean()),
            "accuracy": float((error.abs() < TOLERANCE).float().mean())}


def plot(results: list[dict], path: str, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    for r in results:
        top.plot(r["loss"], label=f"{r['cell']} (test accuracy {r['accuracy']:.1%})",
                 linewidth=0.8)
        bottom.plot(r["grad_norm"], label=r["cell"], linewidth=0.8)
    top.axhline(1 / 6, color="gray", linestyle="--", linewidth=0.8,
                label="predicting the mean (1/6)")
    top.set(yscale="log", ylabel="training MSE",
            title=f"adding problem, T = {args.length}, hidden {args.hidden}, batch "
                  f"{args.batch}, Adam lr {args.lr}")
    bottom.axhline(args.clip, color="gray", linestyle="--", linewidth=0.8,
                   label=f"clipping threshold {args.clip}")
    bottom.set(yscale="log", xlabel="step", ylabel="gradient norm before clipping")
    top.legend(fontsize=8)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells", nargs="*", default=["lstm", "rnn"],
                   help="lstm, rnn, or any shipped cell name or cell file (default: lstm rnn)")
    p.add_argument("--length", type=int, default=100, help="sequence length T (100)")
    p.add_argument("--steps", type=int, default=2000, help="training steps (2000)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="max global gradient norm (1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="adding_problem.png", help="the PNG plot")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    results = [train(cell, args, i) for i, cell in enumerate(args.cells)]
    plot(results, args.out, args)
    summary = [{k: r[k] for k in ("cell", "seconds", "test_mse", "accuracy")} |
               {"final_loss": r["loss"][-1]} for r in results]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for s in summary:
            print(f"{s['cell']:>10}: {s['seconds']:6.1f} s, test MSE {s['test_mse']:.4f}, "
                  f"accuracy (|error| < {TOLERANCE}) {s['accuracy']:.1%}")
        print(f"plot: {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
