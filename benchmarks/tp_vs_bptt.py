"""Target propagation by regularized inversion against back-propagation through time, side by side.

Roulet & Harchaoui (arXiv 2112.01453, TMLR 2023) train an explicitly unrolled tanh RNN of width 100 with
target propagation (TP) and compare it with BPTT on the same model and data. This script does the same, in one
process, with the pure-PyTorch step (:func:`lightning_mpc.rules.tp.tp_backward`, what ``strategy="tp"`` runs):

* **Temporal order, length 60** (4 classes): evaluation accuracy against iterations, and its area under the
  curve (AUC, the mean accuracy over the run). TP with the paper's settings (SGD learning rate 0.1,
  ``gamma_h = 1e-2``, ``r = 10``, linearized targets) in both parameter-step forms (``unrolled``: the surrogate
  differentiated through the unrolled graph, as the authors' code; ``local``: each step with its input held
  fixed), BPTT with the paper's setting (SGD learning rate 1e-5, Nesterov momentum 0.9), and every method at the
  best learning rate of the same grid search (same model, data, seed and step budget for all).
* **Adding, length 30**: evaluation mean squared error against iterations, against the constant predictor's
  1/24 (TP: learning rate 0.1, ``gamma_h = 0.1``, ``r = 1``; BPTT: 1e-3, momentum 0.9).
* **Time per iteration** (forward, gradients and the SGD step, on one thread) of TP (both forms) against BPTT,
  as the sequence length, the width and the batch grow, measured in interleaved rounds (ratios are taken within
  each round), with TP's step broken down into forward, output target, factorisation, target propagation and
  parameter step.

Every method sees the same batches in the same order (the training set is drawn once, larger than
``steps x batch``: fresh sequences at every step, as in the paper). Writes a Markdown page (tables, command,
machine) and a PNG, by default ``docs/rules/tp_vs_bptt.md`` and ``docs/img/tp_vs_bptt.png``.

Usage::

    python benchmarks/tp_vs_bptt.py                      # about 10 minutes on 2 busy CPU cores
    python benchmarks/tp_vs_bptt.py --steps 300 --search-steps 100 --timing-rounds 1 --out /tmp/tp   # a quick look
    python benchmarks/tp_vs_bptt.py --cell gru --out /tmp/tp_gru   # the same on an unrolled GRU (linearized TP)
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_mpc.data.sequences import ADDING_CONSTANT_MSE, adding, temporal_order
from lightning_mpc.rules.tp import RNNSequenceModel, tp_backward
from lightning_mpc.rules.tp.functional import (
    factorize,
    output_displacements,
    propagate_targets,
    propagate_targets_through_jacobians,
)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- tasks and methods
@dataclass(frozen=True)
class Task:
    """A sequence task with the paper's settings for it."""

    name: str
    title: str
    make: Callable[..., tuple[Tensor, Tensor]]
    length: int
    input_size: int
    output_size: int
    metric: str  # "accuracy" (higher is better) or "mse" (lower is better)
    gamma_h: float
    r: float
    paper_tp_lr: float
    paper_bptt_lr: float

    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Cross-entropy for classes, mean squared error for the regression."""
        if self.metric == "accuracy":
            return F.cross_entropy(prediction, target)
        return F.mse_loss(prediction, target)

    def score(self, prediction: Tensor, target: Tensor) -> float:
        """Accuracy (classes) or mean squared error (regression) of a prediction."""
        if self.metric == "accuracy":
            return float((prediction.argmax(-1) == target).float().mean())
        return float(F.mse_loss(prediction, target))


TEMPORAL_ORDER = Task(
    "temporal_order", "temporal order, length 60", temporal_order, 60, 6, 4, "accuracy", 1e-2, 10.0, 0.1, 1e-5
)
ADDING = Task("adding", "adding, length 30", adding, 30, 2, 1, "mse", 0.1, 1.0, 0.1, 1e-3)


@dataclass(frozen=True)
class Method:
    """A training rule: BPTT (SGD, Nesterov momentum 0.9) or TP with one surrogate form (plain SGD)."""

    name: str
    rule: str  # "bptt" or "tp"
    surrogate: str = "unrolled"

    def optimizer(self, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        """The paper's optimizers: SGD with Nesterov momentum 0.9 for BPTT, plain SGD for TP."""
        if self.rule == "bptt":
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        return torch.optim.SGD(model.parameters(), lr=lr)


BPTT = Method("BPTT", "bptt")
TP_UNROLLED = Method("TP (unrolled)", "tp", "unrolled")
TP_LOCAL = Method("TP (local)", "tp", "local")
METHODS = (TP_UNROLLED, TP_LOCAL, BPTT)


def train_step(
    task: Task,
    method: Method,
    model: RNNSequenceModel,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    r: float | None = None,
) -> None:
    """One iteration: gradients by the method (TP: regularization ``r``, default the paper's), then the SGD step."""
    optimizer.zero_grad(set_to_none=True)
    if method.rule == "bptt":
        task.loss(model(x), y).backward()
    else:
        surrogate: Any = method.surrogate
        r = task.r if r is None else r
        tp_backward(model, x, lambda p: task.loss(p, y), gamma_h=task.gamma_h, r=r, surrogate=surrogate)
    optimizer.step()


# --------------------------------------------------------------------------- training curves
@dataclass
class Curve:
    """Evaluation scores of one run."""

    task: str
    method: str
    lr: float
    r: float | None
    """TP's regularization (``None`` for BPTT)."""
    iterations: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    diverged_at: int | None = None
    seconds: float = 0.0
    role: str = ""
    """In the final runs: ``"best"`` (of the search), ``"paper"`` (the paper's setting) or ``"best, paper"``."""

    def area(self, task: Task) -> float:
        """The mean score over the run (trapezoids over the evaluation points).

        After a divergence an accuracy counts as chance (25 %); an error makes the area infinite.
        """
        if self.diverged_at is not None and task.metric != "accuracy":
            return math.inf
        values = [chance(task) if not math.isfinite(v) else v for v in self.scores]
        its = self.iterations
        total = sum((b - a) * (u + v) / 2 for a, b, u, v in zip(its, its[1:], values, values[1:]))
        return total / (self.iterations[-1] - self.iterations[0])

    def first_reaching(self, threshold: float, higher: bool) -> int | None:
        """The first evaluated iteration whose score reaches ``threshold``."""
        for it, value in zip(self.iterations, self.scores):
            if math.isfinite(value) and (value >= threshold if higher else value <= threshold):
                return it
        return None


Setting = tuple[float, "float | None"]
"""A learning rate and, for TP, the regularization ``r``."""


@dataclass
class Data:
    """One task's training batches (in order) and evaluation set."""

    x: Tensor
    y: Tensor
    x_eval: Tensor
    y_eval: Tensor


def make_model(input_size: int, width: int, output_size: int, cell: Any = "rnn") -> RNNSequenceModel:
    """The compared network: an unrolled tanh RNN (``cell="rnn"``, the paper's) or GRU, and a linear readout."""
    return RNNSequenceModel(input_size, width, output_size, cell=cell)


def make_data(task: Task, steps: int, batch: int, eval_size: int, seed: int) -> Data:
    x, y = task.make(steps * batch, task.length, generator=torch.Generator().manual_seed(2 * seed))
    x_eval, y_eval = task.make(eval_size, task.length, generator=torch.Generator().manual_seed(2 * seed + 1))
    return Data(x, y, x_eval, y_eval)


def train_curve(
    task: Task,
    method: Method,
    setting: Setting,
    data: Data,
    steps: int,
    batch: int,
    eval_every: int,
    seed: int,
    cell: str = "rnn",
) -> Curve:
    """Train a fresh model (seeded) for ``steps`` iterations, evaluating every ``eval_every``."""
    lr, r = setting
    torch.manual_seed(seed)
    model = make_model(task.input_size, 100, task.output_size, cell)
    optimizer = method.optimizer(model, lr)
    curve = Curve(task.name, method.name, lr, r)

    def evaluate(iteration: int) -> None:
        with torch.no_grad():
            score = task.score(model(data.x_eval), data.y_eval)
        curve.iterations.append(iteration)
        curve.scores.append(score if curve.diverged_at is None else float("nan"))

    evaluate(0)
    start = time.perf_counter()
    for step in range(steps):
        if curve.diverged_at is None:
            x, y = data.x[step * batch : (step + 1) * batch], data.y[step * batch : (step + 1) * batch]
            try:
                train_step(task, method, model, optimizer, x, y, r)
            except ValueError:  # the factorisation refuses non-finite or exploded weights: diverged
                curve.diverged_at = step + 1
            if not all(torch.isfinite(p).all() for p in model.parameters()):
                curve.diverged_at = curve.diverged_at or step + 1
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluate(step + 1)
    curve.seconds = time.perf_counter() - start
    return curve


def chance(task: Task) -> float:
    """The score of a model that learned nothing: 25 % accuracy, or the constant predictor's 1/24."""
    return 1.0 / task.output_size if task.metric == "accuracy" else ADDING_CONSTANT_MSE


def better(task: Task, a: float, b: float) -> bool:
    return a > b if task.metric == "accuracy" else a < b


# --------------------------------------------------------------------------- time per iteration
@dataclass
class Timing:
    """Median milliseconds per iteration of each method at one size, and the ratios taken within rounds."""

    length: int
    width: int
    batch: int
    ms: dict[str, float]
    ratio: dict[str, float]


def time_iterations(length: int, width: int, batch: int, rounds: int, repeats: int, cell: str = "rnn") -> Timing:
    """Time every method's iteration in interleaved rounds on the temporal-order task's input size."""
    x, y = temporal_order(batch, length, generator=torch.Generator().manual_seed(0))
    task = TEMPORAL_ORDER
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        times: dict[str, float] = {}
        for method in METHODS:
            torch.manual_seed(0)
            model = make_model(6, width, 4, cell)
            optimizer = method.optimizer(model, 1e-6)
            train_step(task, method, model, optimizer, x, y)  # warm-up
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                train_step(task, method, model, optimizer, x, y)
                samples.append(time.perf_counter() - start)
            times[method.name] = statistics.median(samples) * 1e3
        per_round.append(times)
    ms = {m.name: statistics.median(r[m.name] for r in per_round) for m in METHODS}
    ratio = {m.name: statistics.median(r[m.name] / r[BPTT.name] for r in per_round) for m in METHODS}
    return Timing(length, width, batch, ms, ratio)


def breakdown(length: int, width: int, batch: int, repeats: int, cell: str = "rnn") -> dict[str, float]:
    """Milliseconds of the parts of one TP iteration (unrolled surrogate; the rest is the parameter step).

    A GRU factorises ``J_t^T J_t + r I`` inside the propagation, once per time step: its factorisation part is 0.
    """
    x, y = temporal_order(batch, length, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = make_model(6, width, 4, cell)
    loss = lambda p: F.cross_entropy(p, y)
    names = ("forward", "output target", "factorisation", "propagation", "total")
    parts: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        states = model.rnn(x)
        t1 = time.perf_counter()
        _, displacements = output_displacements(model.readout, states, loss, TEMPORAL_ORDER.gamma_h, per_step=False)
        t2 = time.perf_counter()
        factor = None if cell == "gru" else factorize(model.rnn.weight_hh, TEMPORAL_ORDER.r)
        t3 = time.perf_counter()
        if factor is None:
            propagate_targets_through_jacobians(model.rnn, x, states.detach(), displacements, TEMPORAL_ORDER.r)
        else:
            propagate_targets(model.rnn, x, states.detach(), displacements, factor)
        t4 = time.perf_counter()
        model.zero_grad()
        tp_backward(model, x, loss, gamma_h=TEMPORAL_ORDER.gamma_h, r=TEMPORAL_ORDER.r)
        t5 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[key].append(value * 1e3)
    ms = {key: statistics.median(values[1:]) for key, values in parts.items()}
    ms["parameter step (rest)"] = max(0.0, ms["total"] - sum(ms[k] for k in names[:-1]))
    return ms


# --------------------------------------------------------------------------- the run
@dataclass
class TaskResult:
    task: Task
    search: dict[str, list[Curve]]
    final: list[Curve]


def grid(task: Task, method: Method, args: argparse.Namespace) -> list[Setting]:
    """The searched settings: BPTT's learning rates; TP's learning rates times ``r`` (the paper's and ``--tp-rs``)."""
    if method.rule == "bptt":
        return [(lr, None) for lr in args.bptt_lrs]
    rs = sorted({task.r, *args.tp_rs}, reverse=True)
    return [(lr, r) for r in rs for lr in args.tp_lrs]


def describe(curve: Curve) -> str:
    return f"lr {curve.lr:g}" + ("" if curve.r is None else f", r {curve.r:g}")


def run_task(task: Task, args: argparse.Namespace) -> TaskResult:
    data = make_data(task, max(args.steps, args.search_steps), args.batch, args.eval_size, args.seed)
    search: dict[str, list[Curve]] = {}
    for method in METHODS:
        search[method.name] = []
        for setting in grid(task, method, args):
            budget = (args.search_steps, args.batch, args.search_eval_every, args.seed)
            curve = train_curve(task, method, setting, data, *budget, cell=args.cell)
            search[method.name].append(curve)
            print(f"  search {task.name} {method.name} {describe(curve)}: area {curve.area(task):.4f} "
                  f"({curve.seconds:.0f} s{', diverged' if curve.diverged_at else ''})", flush=True)
    final: list[Curve] = []
    runs: dict[tuple[Method, Setting], list[str]] = {}
    for method in METHODS:
        best = best_curve(task, search[method.name])
        runs.setdefault((method, (best.lr, best.r)), []).append("best")
    runs.setdefault((TP_UNROLLED, (task.paper_tp_lr, task.r)), []).append("paper")  # the paper's TP: unrolled
    runs.setdefault((BPTT, (task.paper_bptt_lr, None)), []).append("paper")
    for (method, setting), roles in runs.items():
        budget = (args.steps, args.batch, args.eval_every, args.seed)
        curve = train_curve(task, method, setting, data, *budget, cell=args.cell)
        curve.role = ", ".join(roles)
        final.append(curve)
        print(f"  final {task.name} {method.name} {describe(curve)}: area {curve.area(task):.4f}, last "
              f"{curve.scores[-1]:.4f} ({curve.seconds:.0f} s)", flush=True)
    return TaskResult(task, search, final)


def best_curve(task: Task, curves: Sequence[Curve]) -> Curve:
    """The learning rate whose run has the best area (diverged runs last)."""
    finite = [c for c in curves if c.diverged_at is None] or list(curves)
    best = finite[0]
    for curve in finite[1:]:
        if better(task, curve.area(task), best.area(task)):
            best = curve
    return best


# --------------------------------------------------------------------------- outputs
COLORS = {TP_UNROLLED.name: "tab:blue", TP_LOCAL.name: "tab:green", BPTT.name: "tab:red"}


def label(curve: Curve) -> str:
    return f"{curve.method}, {describe(curve)} ({curve.role.replace('paper', 'paper setting')})"


def plot(path: Path, results: Sequence[TaskResult], timings: dict[str, list[Timing]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for ax, result in zip(axes[0], results):
        task = result.task
        for curve in result.final:
            style = "--" if curve.role == "paper" else "-"  # the paper's setting where the search found another
            name = label(curve) + ("" if curve.diverged_at is None else f", diverged at {curve.diverged_at}")
            ax.plot(curve.iterations, curve.scores, color=COLORS[curve.method], linestyle=style, label=name)
            if curve.diverged_at is not None:
                last = max(i for i, v in enumerate(curve.scores) if math.isfinite(v))
                ax.plot(curve.iterations[last], curve.scores[last], "x", color=COLORS[curve.method], markersize=9)
        if task.metric == "accuracy":
            ax.axhline(chance(task), color="grey", linewidth=0.8, linestyle=":", label="chance (25 %)")
            ax.set_ylabel("evaluation accuracy")
        else:
            baseline = "constant predictor (1/24)"
            ax.axhline(ADDING_CONSTANT_MSE, color="grey", linewidth=0.8, linestyle=":", label=baseline)
            ax.set_yscale("log")
            ax.set_ylabel("evaluation MSE")
        ax.set_xlabel("iteration (batch of 20)")
        ax.set_title(task.title + ", width 100")
        ax.legend(fontsize=8, loc="upper left" if task.metric == "accuracy" else "upper right")
        ax.grid(alpha=0.3)
    for ax, (axis, rows) in zip(axes[1], timings.items()):
        xs = [getattr(t, axis) for t in rows]
        for method in METHODS:
            ax.plot(xs, [t.ms[method.name] for t in rows], marker="o", color=COLORS[method.name], label=method.name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel({"length": "sequence length (width 100, batch 20)", "width": "width (length 60, batch 20)"}[axis])
        ax.set_ylabel("ms per iteration (1 thread)")
        ax.set_title(f"time per iteration against {axis}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt_iter(value: int | None) -> str:
    return "never" if value is None else str(value)


def _final(curve: Curve, digits: int) -> str:
    return f"diverged at {curve.diverged_at}" if curve.diverged_at is not None else f"{curve.scores[-1]:.{digits}f}"


def write_page(
    path: Path,
    image: Path,
    results: Sequence[TaskResult],
    timings: dict[str, list[Timing]],
    batches: list[Timing],
    parts: dict[tuple[int, int, int], dict[str, float]],
    args: argparse.Namespace,
    command: str,
    total_s: float,
) -> None:
    docs = path.parent.parent
    rel_image = Path("..") / image.relative_to(docs) if image.is_relative_to(docs) else image
    lines = [
        "# Target propagation against BPTT: the numbers",
        "",
        "Written by `benchmarks/tp_vs_bptt.py` (do not edit by hand); [the rule's page](tp.md) explains the method.",
        "",
        f"![TP against BPTT]({rel_image.as_posix()})",
        "",
        "## Setup",
        "",
        f"- Model: an explicitly unrolled {'GRU' if args.cell == 'gru' else 'tanh RNN'} of width 100 with a linear "
        f"readout, orthogonal initialisation, zero biases (`RNNSequenceModel(cell={args.cell!r})`); batches of {args.batch}; seed {args.seed}; every method sees the same "
        f"batches in the same order (fresh sequences at every step) and is evaluated on the same {args.eval_size} "
        "held-out sequences.",
        "- TP: `tp_backward` (what `strategy=\"tp\"` runs), linearized targets, plain SGD; `unrolled` differentiates "
        "the surrogate through the unrolled graph (the authors' code), `local` holds each step's input fixed. "
        "BPTT: the same model, SGD with Nesterov momentum 0.9.",
        f"- Learning-rate search: {args.search_steps} iterations per learning rate, BPTT over "
        f"{', '.join(f'{v:g}' for v in args.bptt_lrs)}, TP over {', '.join(f'{v:g}' for v in args.tp_lrs)} times "
        f"r in {{the paper's, {', '.join(f'{v:g}' for v in args.tp_rs)}}} (gamma_h fixed at the paper's); the best "
        f"area under the curve wins and trains for {args.steps} iterations, next to the paper's setting.",
        f"- Budget: {args.steps} iterations (the paper runs 40,000 on temporal order and 24,000 on adding; this "
        "budget keeps the whole script near ten minutes on two shared CPU cores). A run that diverges (non-finite "
        "weights) stops; its accuracy counts as chance (25 %) from there in the AUC.",
        f"- Command: `{command}`; total {total_s / 60:.1f} minutes.",
        f"- Machine: {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s).",
        "",
    ]
    for result in results:
        task = result.task
        higher = task.metric == "accuracy"
        lines += [f"## {task.title.capitalize()}", ""]
        if higher:
            lines += [
                "| method | setting | AUC (mean accuracy) | final accuracy | first at >= 90 % | seconds |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for c in result.final:
                lines.append(
                    f"| {c.method} | {describe(c)} ({c.role}) | {c.area(task):.3f} | {_final(c, 3)} | "
                    f"{_fmt_iter(c.first_reaching(0.9, True))} | "
                    f"{c.seconds:.0f} |"
                )
        else:
            lines += [
                "| method | setting | mean MSE over the run | final MSE | best MSE | first below 1/24 "
                "| seconds |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for c in result.final:
                finite = [v for v in c.scores if math.isfinite(v)]
                lines.append(
                    f"| {c.method} | {describe(c)} ({c.role}) | {c.area(task):.4f} | {_final(c, 4)} | "
                    f"{min(finite):.4f} | "
                    f"{_fmt_iter(c.first_reaching(ADDING_CONSTANT_MSE, False))} | {c.seconds:.0f} |"
                )
            lines += ["", f"The constant predictor 1/2 scores {ADDING_CONSTANT_MSE:.4f} (1/24)."]
        lines += ["", f"Learning-rate search (area under the curve over {args.search_steps} iterations):", ""]
        lines += ["| method | setting | area |", "|---|---|---:|"]
        for name, curves in result.search.items():
            for c in curves:
                area = f"diverged at {c.diverged_at}" if c.diverged_at else f"{c.area(task):.3f}"
                lines.append(f"| {name} | {describe(c)} | {area} |")
        lines.append("")
    lines += [
        "## Time per iteration",
        "",
        "Median milliseconds of one iteration (forward, gradients, SGD step) on one thread, methods interleaved "
        f"over {args.timing_rounds} rounds of {args.timing_repeats} iterations; `x BPTT` is the median ratio "
        "within rounds.",
        "",
        "| length | width | batch | BPTT ms | TP (unrolled) ms | x BPTT | TP (local) ms | x BPTT |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in [*timings["length"], *timings["width"], *batches]:
        lines.append(
            f"| {t.length} | {t.width} | {t.batch} | {t.ms[BPTT.name]:.1f} | {t.ms[TP_UNROLLED.name]:.1f} | "
            f"{t.ratio[TP_UNROLLED.name]:.2f} | {t.ms[TP_LOCAL.name]:.1f} | {t.ratio[TP_LOCAL.name]:.2f} |"
        )
    lines += [
        "",
        "TP's iteration (unrolled surrogate) in parts, milliseconds (medians; each part timed on its own, the "
        "parameter step is the rest: the surrogate's backward through the unrolled graph and the readout's):",
        "",
        "| length | width | batch | forward | output target | factorisation | target propagation (T - 1 solves) "
        "| parameter step | total |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = ("forward", "output target", "factorisation", "propagation", "parameter step (rest)", "total")
    for (length, width, batch), ms in parts.items():
        lines.append(f"| {length} | {width} | {batch} | " + " | ".join(f"{ms[k]:.2f}" for k in keys) + " |")
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 0.01,0.1, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 30,60, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/tp_vs_bptt.py", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="iterations of the final runs (default: %(default)s)")
    parser.add_argument("--search-steps", type=int, default=400, help="iterations per searched learning rate")
    parser.add_argument("--eval-every", type=int, default=100, help="evaluate every N iterations (final runs)")
    parser.add_argument("--search-eval-every", type=int, default=50, help="evaluate every N iterations (search)")
    parser.add_argument("--eval-size", type=int, default=1000, help="evaluation sequences (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=20, help="batch size (default: %(default)s, the paper's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", default="temporal_order,adding", help="comma-separated: temporal_order, adding")
    parser.add_argument("--bptt-lrs", type=_floats, default=[1e-5, 1e-4, 1e-3, 1e-2], help="BPTT learning rates")
    parser.add_argument("--tp-lrs", type=_floats, default=[0.01, 0.1, 1.0], help="TP learning rates")
    parser.add_argument("--tp-rs", type=_floats, default=[1.0], help="TP regularizations besides the paper's")
    parser.add_argument("--lengths", type=_ints, default=[30, 60, 120, 240], help="timed lengths (width 100)")
    parser.add_argument("--widths", type=_ints, default=[50, 100, 200, 400], help="timed widths (length 60)")
    parser.add_argument("--batches", type=_ints, default=[200], help="timed batch sizes (length 60, width 100)")
    parser.add_argument("--timing-rounds", type=int, default=3)
    parser.add_argument("--timing-repeats", type=int, default=5)
    parser.add_argument("--cell", choices=["rnn", "gru"], default="rnn", help="recurrent cell (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "rules", help="folder of tp_vs_bptt.md")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: <out>/../img/tp_vs_bptt.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/tp_vs_bptt.py", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    tasks = {"temporal_order": TEMPORAL_ORDER, "adding": ADDING}
    results = []
    for name in args.tasks.split(","):
        print(f"{name}:", flush=True)
        results.append(run_task(tasks[name], args))
    print("timing:", flush=True)
    timing = (args.timing_rounds, args.timing_repeats, args.cell)
    timings = {
        "length": [time_iterations(n, 100, args.batch, *timing) for n in args.lengths],
        "width": [time_iterations(60, d, args.batch, *timing) for d in args.widths],
    }
    batches = [time_iterations(60, 100, b, *timing) for b in args.batches]
    sizes = [(60, 100, args.batch), (max(args.lengths), 100, args.batch), (60, max(args.widths), args.batch)]
    sizes += [(60, 100, b) for b in args.batches]
    repeats = args.timing_repeats * args.timing_rounds
    parts = {size: breakdown(*size, repeats, args.cell) for size in dict.fromkeys(sizes)}
    for t in [*timings["length"], *timings["width"], *batches]:
        print(f"  L={t.length} d={t.width} B={t.batch}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in t.ms.items()))
    image = args.plot or args.out.parent / "img" / "tp_vs_bptt.png"
    plot(image, results, timings)
    page = args.out / "tp_vs_bptt.md"
    write_page(page, image, results, timings, batches, parts, args, command, time.perf_counter() - start)
    print(f"wrote {page} and {image}")
    return {"results": results, "timings": timings, "batches": batches, "parts": parts}


if __name__ == "__main__":
    main()
