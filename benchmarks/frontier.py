"""The accuracy-memory-time frontier: back-propagation, activation checkpointing, MPC and other rules, side by side.

Trains the ``mnist_mlp`` recipe's model (:class:`lightning_mpc.recipes.MLPClassifier`, 8 blocks, width 256;
``--model residual-mlp``: the ``pint_mnist_resmlp`` recipe's :class:`~lightning_mpc.recipes.ResidualMLPClassifier`;
``--model cifar-resnet``: :class:`~lightning_mpc.recipes.CIFARResNetClassifier`, a convolutional ``nn.Sequential``)
on the bundled MNIST digits, in one process, with the same seed, epochs and batches for every method:

* back-propagation (Lightning's default strategy);
* back-propagation with activation checkpointing on every block, and on segments of about sqrt(T) blocks
  (:func:`lightning_mpc.bench.with_checkpointing`, ``torch.utils.checkpoint`` non-reentrant);
* MPC (:class:`lightning_mpc.MPCStrategy`) in ``sliding`` and ``block`` mode for ``h`` in {1, 2, 4, T/2};
* the other registered credit-assignment rules that suit the model (PEPITA and Forward-Forward on the MLP, Scalable
  Forward-Forward on ``--model cifar-resnet``, PinT on ``--model residual-mlp``: :data:`RULE_METHODS`; ``--rules`` names
  them explicitly; a rule without an entry is built by :func:`lightning_mpc.bench.rule_method`).

Every row is a :class:`lightning_mpc.bench.Method`: a label, how to build the model and the Trainer's
strategy, and where the memory figure comes from. Per method it measures the evaluation accuracy after
training and the **real memory** of a training step (allocator bytes, :class:`lightning_mpc.bench.StepMemory`:
the second step, gradients allocated beforehand and zeroed in place, up to the optimizer's update; on a GPU
the CUDA allocator). Step times come from a separate timing phase in which the methods take turns
(``--rounds`` rounds of ``--timing-steps`` steps each, on fresh models); ratios to back-propagation are taken
within each round and shown with their interquartile range, and a run whose back-propagation rounds vary by
more than 1.5x is flagged. It writes a Markdown page (table, plot, verdicts, the command and the machine)
and a PNG plot, by default ``docs/frontier.md`` and ``docs/img/frontier.png``.

Usage::

    python benchmarks/frontier.py                    # a few minutes on 2 CPU cores; rewrites docs/frontier.md
    python benchmarks/frontier.py --epochs 1 --limit 512 --out /tmp/frontier   # a quick look
    python benchmarks/frontier.py --model residual-mlp --blocks 10 --page frontier_residual.md   # with pint
    python benchmarks/frontier.py --model cifar-resnet --page frontier_conv.md                   # with sff
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

import lightning_mpc
from lightning_mpc.bench import (
    MIB,
    Method,
    MethodResult,
    Timings,
    TrainingSetup,
    accuracy_verdicts,
    backprop_method,
    checkpoint_method,
    machine_line,
    mpc_method,
    quiet_lightning,
    results_table,
    rule_method,
    sqrt_segment,
    time_methods,
    train_and_measure,
)
from lightning_mpc.bench.arguments import horizon_list, mode_list, name_list, positive_int
from lightning_mpc.data import EVAL_SIZE, TRAIN_SIZE
from lightning_mpc.recipes import CIFARResNetClassifier, MLPClassifier, ResidualMLPClassifier

ROOT = Path(__file__).resolve().parents[1]

ModelFactory = Callable[[int], L.LightningModule]


@dataclass(frozen=True)
class Model:
    """A model every row of the frontier trains.

    Attributes:
        build: a fresh LightningModule of ``T`` blocks.
        describe: the model in words for ``T`` blocks, for the page's setup.
    """

    build: ModelFactory
    describe: Callable[[int], str]


MODELS: dict[str, Model] = {
    "mlp": Model(
        lambda t: MLPClassifier(num_blocks=t),
        lambda t: (
            f"`MLPClassifier(num_blocks={t})` of the `mnist_mlp` recipe (`Linear + ReLU` blocks 256 wide; "
            "Adam, lr 1e-3)"
        ),
    ),
    "cifar-resnet": Model(
        lambda t: CIFARResNetClassifier(depth=2 * t - 2, in_channels=1),
        lambda t: (
            f"`CIFARResNetClassifier(depth={2 * t - 2}, in_channels=1)`: He et al.'s CIFAR ResNet-{2 * t - 2} as an "
            f"`nn.Sequential` of {t} blocks (a 3x3 stem, {t - 2} residual blocks of 16, 32 and 64 channels, the "
            "pooled classifier; Nesterov SGD, lr 0.05, cosine schedule)"
        ),
    ),
    "residual-mlp": Model(
        lambda t: ResidualMLPClassifier(num_steps=t - 2),
        lambda t: (
            f"`ResidualMLPClassifier(num_steps={t - 2})` of the `pint_mnist_resmlp` recipe (a `Linear + Tanh` "
            f"stem, {t - 2} residual steps `x + dt tanh(Wx + b)` 128 wide, a linear classifier; Adam, lr 1e-3)"
        ),
    ),
}
"""The models ``--model`` chooses from; ``T`` counts every block (a residual MLP's stem and classifier too)."""


@dataclass(frozen=True)
class RuleRow:
    """How the frontier trains a registered rule.

    Attributes:
        build: the rule's row for the model in use (``rule_method(name, label, make_model, **arguments)``).
        models: the :data:`MODELS` the rule can train.
    """

    build: Callable[[ModelFactory], Method]
    models: tuple[str, ...] = tuple(MODELS)


RULE_METHODS: dict[str, RuleRow] = {
    "pint": RuleRow(lambda make: rule_method("pint", "PinT (2 slabs, 1 sweep)", make), models=("residual-mlp",)),
    "pepita": RuleRow(lambda make: rule_method("pepita", "PEPITA", make), models=("mlp",)),
    "ff": RuleRow(
        lambda make: rule_method(
            "ff", "Forward-Forward", make, goodness="mean", sharpness=10.0, label_value=10.0, negatives="hardest"
        ),
        models=("mlp",),
    ),
    "sff": RuleRow(lambda make: rule_method("sff", "Scalable FF", make), models=("cifar-resnet",)),
}
"""The frontier rows of the registered rules, by name. Adding a rule to the frontier is one entry, e.g.::

    RULE_METHODS["pepita"] = RuleRow(lambda make: rule_method("pepita", "PEPITA", make), models=("mlp",))

Registered rules listed here that suit the model are trained by default; ``--rules`` names any registered rule
(one without an entry is built by ``rule_method(name)`` on the model in use).
"""


def rule_row(name: str, model: str = "mlp") -> Method:
    """The frontier row of a registered rule on ``model``.

    Raises:
        ValueError: if the rule's entry does not list ``model``.
    """
    make = MODELS[model].build
    row = RULE_METHODS.get(name)
    if row is None:
        return rule_method(name, make_model=make)
    if model not in row.models:
        raise ValueError(
            f"The rule {name!r} cannot train the {model!r} model (it trains {', '.join(row.models)}). "
            f"HINT: run the frontier with --model {row.models[0]}, or leave {name} out of --rules."
        )
    return row.build(make)


def methods(
    num_blocks: int, horizons: Sequence[int], modes: Sequence[str], rules: Sequence[str] = (), model: str = "mlp"
) -> list[Method]:
    """Back-propagation, checkpointing (every block, and segments of about sqrt(T) blocks), MPC, then other rules."""
    make = MODELS[model].build
    rows = [backprop_method(make_model=make), checkpoint_method(1, make_model=make)]
    segment = sqrt_segment(num_blocks)
    if segment < num_blocks:
        rows.append(checkpoint_method(segment, make_model=make))
    for mode in modes:
        rows += [mpc_method(h, mode, label=f"MPC {mode}", make_model=make) for h in horizons]
    return rows + [rule_row(name, model) for name in rules]


def default_rules(model: str = "mlp") -> list[str]:
    """The registered rules of :data:`RULE_METHODS` that can train ``model``."""
    registered = lightning_mpc.available_rules()
    return [name for name, row in RULE_METHODS.items() if name in registered and model in row.models]


ELSEWHERE: dict[str, str] = {
    "tp": "trains recurrent networks over the time steps of a sequence: see [TP against BPTT](rules/tp_vs_bptt.md)",
}
"""Registered rules the frontier does not train, with where they are compared instead (named on the page)."""


def rules_elsewhere(model: str) -> list[str]:
    """Registered rules not on a page of ``model``: those of :data:`RULE_METHODS` that need another model, and
    :data:`ELSEWHERE`."""
    registered = lightning_mpc.available_rules()
    other = [
        f"{n} (`--model {r.models[0]}`)" for n, r in RULE_METHODS.items() if n in registered and model not in r.models
    ]
    return other + [f"{n} ({why})" for n, why in ELSEWHERE.items() if n in registered]


# --------------------------------------------------------------------------- verdicts
CHANCE_ACCURACY = 0.15
"""Below this evaluation accuracy a row is called chance level (10 classes: 0.10)."""


def verdicts(results: Sequence[MethodResult], num_blocks: int) -> list[str]:
    """Accuracy at ``h = T/2``, memory against the horizon, the other rules, checkpointing, and what goes below
    checkpointing."""
    bp = results[0]
    lines = accuracy_verdicts(results, num_blocks)
    for mode in dict.fromkeys(r.method.mode for r in results if r.method.family == "mpc"):
        runs = sorted(
            (r for r in results if r.method.family == "mpc" and r.method.mode == mode),
            key=lambda r: r.method.horizon or 0,
        )
        peaks = [r.peak_bytes for r in runs]
        rising = all(a < b for a, b in itertools.pairwise(peaks))
        below = [r for r in runs if (r.method.horizon or 0) < num_blocks and r.peak_bytes < bp.peak_bytes]
        shown = ", ".join(f"h={r.method.horizon}: {r.peak_bytes / bp.peak_bytes:.2f}" for r in runs)
        lines.append(
            f"- MPC {mode}: real memory {'rises' if rising else 'does NOT rise'} strictly with h; below BP's at "
            f"{', '.join(f'h={r.method.horizon}' for r in below) or 'no horizon'} (x BP: {shown})."
        )
    for r in results:
        if r.method.family in ("bp", "checkpoint", "mpc"):
            continue
        chance = " (chance level: it did not learn on this model)" if r.accuracy < CHANCE_ACCURACY else ""
        lines.append(
            f"- {r.method.label}: {100 * r.accuracy:.2f} % against BP's {100 * bp.accuracy:.2f} %{chance}, at "
            f"{r.peak_bytes / bp.peak_bytes:.2f} x BP's real memory."
        )
    checkpointed = [r for r in results if r.method.family == "checkpoint"]
    for c in checkpointed:
        lines.append(
            f"- {c.method.label}: {100 * c.accuracy:.2f} % (exact gradients; BP {100 * bp.accuracy:.2f} %) at "
            f"{c.peak_bytes / bp.peak_bytes:.2f} x BP's real memory."
        )
    if checkpointed:
        floor = min(c.peak_bytes for c in checkpointed)
        lower = [r for r in results if not r.method.exact and r.peak_bytes < floor]
        shown = "; ".join(
            f"{r.method.key}: {r.peak_bytes / bp.peak_bytes:.2f} x, {100 * (r.accuracy - bp.accuracy):+.2f} points"
            for r in lower
        )
        lines.append(
            f"- Below checkpointing's least memory ({floor / bp.peak_bytes:.2f} x BP): "
            + (f"{shown} (accuracy against BP)." if lower else "no other row.")
        )
    return lines


# --------------------------------------------------------------------------- plot and page
def write_plot(path: Path, results: Sequence[MethodResult], timings: Timings, num_blocks: int) -> None:
    """Accuracy against real memory, and step time against real memory, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    markers = iter(("s", "D", "^", "v", "P", "X", "h"))
    styles = {
        r.method.key: ("tab:gray", next(markers, "x"), 8) for r in results if r.method.family not in ("bp", "mpc")
    }
    styles[results[0].method.key] = ("black", "*", 14)
    for ax, value, ylabel in (
        (ax_acc, lambda r: 100 * r.accuracy, "evaluation accuracy (%)"),
        (ax_time, lambda r: 1e3 * timings.time(r.method.key).median, "training step (ms)"),
    ):
        for r in results:
            if r.method.key in styles:
                color, marker, size = styles[r.method.key]
                ax.plot(
                    r.peak_bytes / MIB,
                    value(r),
                    marker=marker,
                    color=color,
                    markersize=size,
                    linestyle="",
                    label=r.method.label,
                )
        for mode, color in (("sliding", "tab:blue"), ("block", "tab:orange")):
            runs = sorted(
                (r for r in results if r.method.family == "mpc" and r.method.mode == mode),
                key=lambda r: r.method.horizon or 0,
            )
            if not runs:
                continue
            xs, ys = [r.peak_bytes / MIB for r in runs], [value(r) for r in runs]
            ax.plot(xs, ys, marker="o", color=color, label=f"MPC {mode}")
            for r, x, y in zip(runs, xs, ys):
                ax.annotate(
                    f"h={r.method.horizon}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color
                )
        ax.set_xlabel("real memory of a training step (peak MiB above its start)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
    ax_acc.set_title(f"Accuracy against memory ({num_blocks} blocks, bundled MNIST)")
    ax_time.set_title("Step time against memory")
    ax_acc.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_page(
    path: Path,
    plot: Path,
    results: Sequence[MethodResult],
    timings: Timings,
    args: argparse.Namespace,
    command: str,
    total_s: float,
) -> str:
    """Write the Markdown page and return its table."""
    text_table = results_table(results, timings, args.blocks, batch_size=args.batch_size).render(markdown=True)
    train = min(TRAIN_SIZE, args.limit or TRAIN_SIZE)
    evaluation = min(EVAL_SIZE, args.limit or EVAL_SIZE)
    smoke = " **Smoke run: `--limit` cut both splits; the figures mean nothing.**" if args.limit else ""
    image = os.path.relpath(plot, path.parent)
    rules = [r.method.label for r in results if r.method.family not in ("bp", "checkpoint", "mpc")]
    chance = [r.method.label for r in results if r.method.label in rules and r.accuracy < CHANCE_ACCURACY]
    others = f", and {', '.join(rules)}" if rules else ""
    elsewhere = rules_elsewhere(args.model)
    lines = [
        "<!-- Generated by benchmarks/frontier.py; edit the script, not this page. -->",
        "# The accuracy-memory frontier" + ("" if args.model == "mlp" else f" ({args.model})"),
        "",
        (
            "What does the horizon buy? The same model, data, seed, epochs and batches, trained with "
            "back-propagation, with back-propagation and activation checkpointing (on every block, and on segments of "
            f"about sqrt(T) blocks), with MPC in both window modes at h in "
            f"{{{', '.join(str(h) for h in args.horizons)}}} (T = {args.blocks} blocks, so T/2 = {args.blocks // 2})"
            f"{others}, measured side by side in one process.{smoke}"
        ),
        "",
        f"![Accuracy and step time against real memory]({image})",
        "",
        text_table,
        "",
        timings.noise_note(),
        "",
        "## Verdicts",
        "",
        *verdicts(results, args.blocks),
        "",
        "## How to read it",
        "",
        (
            "- **Real peak**: the most bytes the allocator held at once during the second training step, above what "
            "was allocated before it (`lightning_mpc.bench.StepMemory`; on CPU the profiler's allocator events, on a "
            "GPU `max_memory_allocated`): the forward, every backward, the local heads and every temporary, up to the "
            "optimizer's update. Gradients are allocated beforehand and zeroed in place (`zero_grad(set_to_none="
            "False)`), so no row pays for allocating `.grad`."
        ),
        *(
            [
                (
                    "- Computing a weight gradient allocates a temporary the size of the weight before it is added into "
                    "`.grad`. Back-propagation computes the first block's gradient (the largest: 784 inputs) last, when "
                    "the activations are already freed; MPC computes it while its window is still alive. At this batch "
                    f"size ({args.batch_size}) a block's activation (batch x width floats) is no larger than its weight "
                    "(width x width floats), so these temporaries are a large share of every row and limit what MPC can "
                    "save here. The saving grows with the activations' share of the step (larger batches, wider or deeper "
                    "networks): see [Memory and time](benchmarks.md) for the 1024-wide MLP and the CIFAR ResNets."
                )
            ]
            if args.model == "mlp" and args.batch_size <= 256
            else []
        ),
        (
            "- **Step time**: a separate timing phase in which the methods take turns on fresh models "
            f"({args.rounds} round(s) of {args.timing_steps} steps after 3 warm-up steps each); **time / BP** is the "
            "median over rounds of the step time over back-propagation's in the same round, with the interquartile "
            "range over rounds in brackets. A step includes the optimizer update. **samples/s** is the batch size "
            "over the median step time."
        ),
        *(
            [
                (
                    f"- The other rules ({', '.join(rules)}) train the same model with the same optimizer as every "
                    "row, not with their own recipes' models and settings; their own pages give those numbers "
                    "([rules](rules/index.md))."
                    + (
                        f" {', '.join(chance)} stayed at chance level: it did not learn on this model (PEPITA learns "
                        "on shallow networks, see its page)."
                        if chance
                        else ""
                    )
                )
            ]
            if rules
            else []
        ),
        (
            "- MPC `sliding` carries every local loss back through h blocks (about (h + 2) / 3 times "
            "back-propagation's backward work) and `block` through its own window only. Checkpointing keeps the "
            "input of every checkpointed segment and recomputes each segment once during the backward: it saves "
            "only what a segment holds inside, so where a block's activations sit on its boundaries (an MLP's "
            "`Linear + ReLU` keeps its input and its output) checkpointing every block saves nothing."
        ),
        "",
        "## Setup",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine_line('cuda' if args.accelerator == 'gpu' else None)}.",
        (
            f"- Data: the bundled MNIST digits (`lightning_mpc/data/mnist10k.npz`); train on the first {train:,}, "
            f"evaluate on {evaluation:,} of the last 2,000 (indices 8000..{8000 + evaluation - 1})."
        ),
        (
            f"- Model: {MODELS[args.model].describe(args.blocks)}, batch size {args.batch_size}, {args.epochs} "
            f"epoch(s), seed {args.seed}; MPC adds a linear local head per block but the last. Every run starts from "
            "the same weights and sees the same batches."
        ),
        *([f"- Registered rules not on this page: {'; '.join(elsewhere)}."] if elsewhere else []),
        f"- Wall time of the whole benchmark: {total_s:.0f} s.",
        *([f"- Note: {args.note}"] if args.note else []),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return text_table


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line flags."""
    parser = argparse.ArgumentParser(prog="python benchmarks/frontier.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--epochs", type=positive_int, default=10, help="training epochs per method (default: %(default)s)"
    )
    parser.add_argument(
        "--model", choices=list(MODELS), default="mlp", help="the model every row trains (default: mlp)"
    )
    parser.add_argument("--blocks", type=int, default=8, help="blocks T of the model (default: %(default)s)")
    parser.add_argument(
        "--horizons", type=horizon_list, default=None, help="comma-separated MPC horizons (default: 1,2,4 and T/2)"
    )
    parser.add_argument(
        "--modes",
        type=mode_list,
        default=["sliding", "block"],
        help="comma-separated MPC modes (default: sliding,block)",
    )
    parser.add_argument(
        "--rules",
        type=name_list,
        default=None,
        help="comma-separated registered rules to add (default: those of RULE_METHODS that suit --model)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=512,
        help="batch size (default: %(default)s, the demo's: activations, not gradient buffers, dominate a step)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--limit", type=positive_int, default=None, help="digits per split (smoke runs)")
    parser.add_argument("--rounds", type=positive_int, default=5, help="timing rounds (default: %(default)s)")
    parser.add_argument("--timing-steps", type=positive_int, default=15, help="timed steps per method and round")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads on CPU (default: 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of the page (default: docs/)")
    parser.add_argument("--page", default="frontier.md", help="the page's file name in --out (default: %(default)s)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: <out>/img/<page name>.png)")
    parser.add_argument("--note", default="", help="a line about the machine or run, added to the page's setup")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code."""
    start = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.blocks < (3 if args.model == "residual-mlp" else 2):
        parser.error("--blocks must be at least 2 (3 for the residual MLP: a stem, a step and a classifier)")
    if args.model == "cifar-resnet" and (args.blocks < 5 or (args.blocks - 2) % 3):
        parser.error(
            "--blocks for the CIFAR ResNet is 3n + 2 (a stem, 3n residual blocks, the classifier): 5, 8, 11, ..."
        )
    if args.horizons is None:
        args.horizons = sorted({1, 2, 4, args.blocks // 2} - {0})
    rules = default_rules(args.model) if args.rules is None else args.rules
    unknown = [r for r in rules if r not in lightning_mpc.available_rules() or r == "mpc"]
    if unknown:
        parser.error(
            f"--rules: {unknown} are not registered rules other than mpc; registered: {lightning_mpc.available_rules()}"
        )
    args.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    page = args.out / args.page
    plot = args.plot or args.out / "img" / f"{Path(args.page).stem}.png"
    raw = list(sys.argv[1:] if argv is None else argv)
    shown = [a for i, a in enumerate(raw) if not (a.startswith("--note") or (i and raw[i - 1] == "--note"))]
    command = " ".join(["python benchmarks/frontier.py", *(shlex.quote(a) for a in shown)])
    setup = TrainingSetup(args.blocks, args.epochs, args.batch_size, args.seed, args.limit, args.accelerator)
    previous = torch.get_num_threads()
    if args.accelerator == "cpu":
        torch.set_num_threads(args.threads)
    try:
        with quiet_lightning(logging.ERROR, all_warnings=True):
            rows = methods(args.blocks, args.horizons, args.modes, rules, args.model)
            results = []
            for index, method in enumerate(rows, start=1):
                result = train_and_measure(method, setup, limit_val_batches=0)
                results.append(result)
                print(
                    f"[{index}/{len(rows)}] {method.key}: accuracy {100 * result.accuracy:.2f} %, real peak "
                    f"{result.peak_bytes / MIB:.2f} MiB, trained in {result.fit_s:.1f} s",
                    flush=True,
                )
            timings = time_methods(
                rows,
                setup,
                rounds=args.rounds,
                steps=args.timing_steps,
                on_round=lambda i: print(f"timing round {i + 1}/{args.rounds} done", flush=True),
            )
            write_plot(plot, results, timings, args.blocks)
            text_table = write_page(page, plot, results, timings, args, command, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    print()
    print(text_table)
    print()
    print(timings.noise_note())
    print("\n".join(verdicts(results, args.blocks)))
    print(f"\nWrote {page} and {plot} in {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
