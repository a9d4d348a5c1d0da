"""Ren & Li's deep-linear analysis, measured: alignment of the MPC gradient with back-propagation versus ``h``.

The setting of the paper's analysis: a deep linear network ``x_{t+1} = W_t x_t`` with near-identity
layers, whitened inputs (``X^T X / n = I`` exactly), a linear target ``y = A x`` and the same squared
loss applied to every intermediate state (identity heads). For each depth ``T`` the script measures
``cos^2`` between the sliding-window MPC gradient of all layers and back-propagation's at every
horizon ``h = 1..T`` with :func:`lightning_mpc.select_horizon`, averages over a few random networks,
and fits ``1 - cos^2 = c (1 - h/T)^p``. Two families of near-identity layers are measured:

- ``iid``: ``W_t = I + sigma G_t / sqrt(d T)``, independent Gaussian perturbations (scaled with ``T``
  so that the end-to-end map stays comparable across depths);
- ``smooth``: ``W_t = I + sigma B / T`` with one shared ``B``, the discretisation of a linear ODE
  (the continuous-depth picture).

Run from the repository root (about half a minute on one CPU core)::

    python recipes/deep_linear.py --out docs/img

It prints a Markdown table of the fitted exponents and writes ``deep_linear_alignment.png``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lightning_mpc import select_horizon
from lightning_mpc.horizon import AlignmentLaw, fit_alignment_law

FAMILIES = ("iid", "smooth")


def whitened_inputs(samples: int, width: int, generator: torch.Generator) -> Tensor:
    """Gaussian inputs transformed so that their empirical covariance is exactly the identity."""
    x = torch.randn(samples, width, generator=generator, dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / samples)
    return torch.linalg.solve_triangular(chol, x.T, upper=False).T


def near_identity_layers(
    depth: int, width: int, family: str, sigma: float, generator: torch.Generator
) -> list[nn.Module]:
    """``depth`` bias-free linear layers ``W_t = I + E_t`` of the given family, in float64."""
    shared = torch.randn(width, width, generator=generator, dtype=torch.float64) / math.sqrt(width)
    layers: list[nn.Module] = []
    for _ in range(depth):
        if family == "iid":
            noise = torch.randn(width, width, generator=generator, dtype=torch.float64)
            perturbation = sigma * noise / math.sqrt(width * depth)
        elif family == "smooth":
            perturbation = sigma * shared / depth
        else:
            raise ValueError(f"Unknown family {family!r}. HINT: use one of {FAMILIES}.")
        layer = nn.Linear(width, width, bias=False, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(width, dtype=torch.float64) + perturbation)
        layers.append(layer)
    return layers


def squared_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """``0.5 * E ||prediction - target||^2``, the same at every depth."""
    return 0.5 * ((prediction - target) ** 2).sum(dim=1).mean()


def measure(depth: int, family: str, seed: int, width: int, samples: int, sigma: float) -> dict[int, float]:
    """``cos^2`` to back-propagation at every horizon ``1..T`` for one random network."""
    generator = torch.Generator().manual_seed(seed * 1000 + depth)
    layers = near_identity_layers(depth, width, family, sigma, generator)
    target_map = torch.eye(width, dtype=torch.float64)
    target_map += torch.randn(width, width, generator=generator, dtype=torch.float64) / math.sqrt(width)
    x = whitened_inputs(samples, width, generator)
    y = x @ target_map.T
    report = select_horizon(
        layers,
        [nn.Identity() for _ in range(depth - 1)],
        [(x, y)],
        squared_loss,
        min_alignment=0.9,
        probes=range(1, depth + 1),
    )
    return report.alignment


@dataclass
class DepthResult:
    """The alignment curve of one family at one depth, averaged over seeds, and its fits."""

    family: str
    depth: int
    alignment: dict[int, float]
    law: AlignmentLaw
    near_law: AlignmentLaw
    seed_exponents: list[float]

    @property
    def horizon_for_0_9(self) -> int:
        """The smallest ``h`` whose mean ``cos^2`` reaches 0.9."""
        return min(h for h, a in self.alignment.items() if a >= 0.9)


def run(
    depths: Sequence[int], families: Sequence[str], seeds: int, width: int, samples: int, sigma: float
) -> list[DepthResult]:
    """Measure and fit every (family, depth)."""
    results = []
    for family in families:
        for depth in depths:
            curves = [measure(depth, family, seed, width, samples, sigma) for seed in range(seeds)]
            mean = {h: sum(c[h] for c in curves) / len(curves) for h in curves[0]}
            law = fit_alignment_law(mean, depth)
            near = fit_alignment_law({h: a for h, a in mean.items() if 2 * h >= depth}, depth)
            seed_exponents = [fit_alignment_law(c, depth).exponent for c in curves]
            results.append(DepthResult(family, depth, mean, law, near, seed_exponents))
    return results


def table(results: Sequence[DepthResult]) -> str:
    """The fitted exponents as a Markdown table."""
    lines = [
        "| layers | T | p (all h < T) | c | p per seed (mean +- sd) | p (h >= T/2) | cos^2 at h = 1 | smallest h with cos^2 >= 0.9 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mean = sum(r.seed_exponents) / len(r.seed_exponents)
        sd = math.sqrt(sum((p - mean) ** 2 for p in r.seed_exponents) / max(len(r.seed_exponents) - 1, 1))
        lines.append(
            f"| {r.family} | {r.depth} | {r.law.exponent:.2f} | {r.law.coefficient:.3f} | {mean:.2f} +- {sd:.2f} | "
            f"{r.near_law.exponent:.2f} | {r.alignment[1]:.3f} | {r.horizon_for_0_9} ({r.horizon_for_0_9 / r.depth:.2f} T) |"
        )
    return "\n".join(lines)


def plot(results: Sequence[DepthResult], path: Path) -> None:
    """``1 - cos^2`` against ``1 - h/T`` on log-log axes, one panel per family, with the fitted laws."""
    from matplotlib.figure import Figure

    families = sorted({r.family for r in results}, key=FAMILIES.index)
    fig = Figure(figsize=(5 * len(families), 4.2), layout="constrained")
    axes = fig.subplots(1, len(families), squeeze=False)[0]
    for ax, family in zip(axes, families):
        for index, r in enumerate(x for x in results if x.family == family):
            hs = [h for h in sorted(r.alignment) if h < r.depth]
            distance = [1 - h / r.depth for h in hs]
            ax.loglog(distance, [max(1 - r.alignment[h], 1e-16) for h in hs], "o", color=f"C{index}", markersize=4)
            low = math.log10(min(distance))
            grid = [10 ** (low - low * i / 100) for i in range(101)]
            ax.loglog(
                grid,
                [r.law.misalignment(r.depth * (1 - d)) for d in grid],
                color=f"C{index}",
                label=f"T = {r.depth}: p = {r.law.exponent:.2f}",
            )
        ax.loglog([0.05, 1], [0.05**3 * 0.5, 0.5], "k--", linewidth=0.8, label="slope 3 (paper)")
        ax.loglog([0.05, 1], [0.05**2 * 0.5, 0.5], "k:", linewidth=0.8, label="slope 2")
        ax.set_xlabel("1 - h/T")
        ax.set_ylabel("1 - cos² to back-propagation")
        ax.set_title(f"deep linear network, {family} near-identity layers")
        ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img"), help="folder for the PNG")
    parser.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--seeds", type=int, default=3, help="random networks per depth")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--sigma", type=float, default=1.0, help="size of the layers' deviation from I")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 16 x 16 matrices: threads only add contention (10-80x slower on a shared box)
    start = time.perf_counter()
    results = run(args.depths, args.families, args.seeds, args.width, args.samples, args.sigma)
    print(table(results))
    path = args.out / "deep_linear_alignment.png"
    plot(results, path)
    print(f"\nwrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
