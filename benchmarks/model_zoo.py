"""Real memory of horizon training across the model zoo, and the memory-balanced partition of ResNet-18.

Two measurements, each side by side in one process:

``zoo``: for every supported family, the number of blocks of the default partition and the real peak
(allocator bytes, :class:`lightning_mpc.RealMemoryMeter`) of one training step at ``h = 1`` and ``h = 2``
divided by back-propagation's, on the same model, batch and seed. The step runs the model's *own*
``forward`` with the block hooks attached, as ``strategy="mpc"`` does inside Lightning; back-propagation
is ``cross_entropy(model(x), y).backward()``. Gradients exist before the measured steps (as after the first
optimizer step), so the figures are what a step adds on top of parameters and their gradients.

``balance``: torchvision ResNet-18 on 32x32 images, the default cut against ``partition(model,
balance="memory")``: real peaks at ``h = 1`` and ``h = 2`` relative to back-propagation, and the step time of
the balanced cut relative to the default one at ``h = 1`` (the two take turns, ``--repeats`` steps each per
round, in alternating order, the fastest of them counting; the ratio is taken per round, and the median,
quartiles and range over rounds are reported, with the ratio of the two fastest steps overall).

Usage::

    python benchmarks/model_zoo.py zoo --markdown
    python benchmarks/model_zoo.py balance --batch 128 --rounds 20 --markdown
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import Tensor, nn

from lightning_mpc import HorizonEngine, partition
from lightning_mpc.core.blocks import hook_points
from lightning_mpc.core.heads import infer_heads
from lightning_mpc.core.hooks import BlockHooks
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.realmem import RealMemoryMeter, measure_peak

SEED = 0
CLASSES = 10


# --------------------------------------------------------------------------- one step, hooked like the strategy
@dataclass
class Setup:
    """A model, its blocks and automatic heads, hooks installed, and one batch."""

    model: nn.Module
    blocks: list[nn.Module]
    heads: nn.ModuleList
    hooks: BlockHooks
    x: Tensor
    y: Tensor

    @classmethod
    def build(cls, model: nn.Module, x: Tensor, y: Tensor, blocks: list[nn.Module] | None = None) -> Setup:
        blocks = partition(model) if blocks is None else blocks
        return cls(model, blocks, infer_heads(blocks, x), BlockHooks(blocks), x, y)

    def backprop(self) -> None:
        F.cross_entropy(self.model(self.x), self.y).backward()

    def mpc(self, horizon: int) -> None:
        engine = HorizonEngine(self.blocks, list(self.heads), horizon)
        engine.start(lambda prediction: F.cross_entropy(prediction, self.y))
        self.hooks.attach(engine)
        try:
            out = self.model(self.x)
        finally:
            self.hooks.attach(None)
        engine.finish(F.cross_entropy(out, self.y))

    def peaks(self, horizons: tuple[int, ...]) -> tuple[int, list[int]]:
        """Back-propagation's real peak and the horizon rule's at each horizon, gradients allocated beforehand."""
        with preserved_buffers([self.model]):
            self.backprop()
            self.mpc(1)  # every .grad (heads included) exists now
            bp = measure_peak(self.backprop)[1].peak_bytes
            return bp, [measure_peak(self.mpc, h)[1].peak_bytes for h in horizons]

    def block_peaks(self, horizon: int) -> list[int]:
        """The real peak while each block ran (its forward, its local loss and the window backwards run then)."""
        meter = RealMemoryMeter()
        handles = [hook_points(b)[0].register_forward_pre_hook(lambda *_: meter.mark()) for b in self.blocks]
        try:
            with preserved_buffers([self.model]):
                self.mpc(horizon)  # every .grad exists before the measured step
                with meter:
                    self.mpc(horizon)
        finally:
            for handle in handles:
                handle.remove()
        assert meter.result is not None
        return list(meter.result.interval_peaks)

    def close(self) -> None:
        self.hooks.remove()


# --------------------------------------------------------------------------- the zoo
def _timm(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES)

    return build


ZOO: list[tuple[str, str, Callable[[], nn.Module], int]] = [
    ("ResNet", "resnet18", partial(tvm.resnet18, num_classes=CLASSES), 32),
    ("ResNet (bottleneck)", "resnet50", partial(tvm.resnet50, num_classes=CLASSES), 32),
    ("ResNeXt", "resnext50_32x4d", partial(tvm.resnext50_32x4d, num_classes=CLASSES), 32),
    ("RegNet", "regnet_y_400mf", partial(tvm.regnet_y_400mf, num_classes=CLASSES), 32),
    ("MobileNetV2", "mobilenet_v2", partial(tvm.mobilenet_v2, num_classes=CLASSES), 32),
    ("MobileNetV3", "mobilenet_v3_small", partial(tvm.mobilenet_v3_small, num_classes=CLASSES), 32),
    ("EfficientNet", "efficientnet_b0", partial(tvm.efficientnet_b0, num_classes=CLASSES), 32),
    ("EfficientNet V2", "efficientnet_v2_s", partial(tvm.efficientnet_v2_s, num_classes=CLASSES), 32),
    ("MNASNet", "mnasnet0_5", partial(tvm.mnasnet0_5, num_classes=CLASSES), 32),
    ("ShuffleNetV2", "shufflenet_v2_x0_5", partial(tvm.shufflenet_v2_x0_5, num_classes=CLASSES), 32),
    ("VGG", "vgg11_bn", partial(tvm.vgg11_bn, num_classes=CLASSES), 32),
    ("AlexNet", "alexnet", partial(tvm.alexnet, num_classes=CLASSES), 64),
    ("SqueezeNet", "squeezenet1_1", partial(tvm.squeezenet1_1, num_classes=CLASSES), 32),
    ("DenseNet", "densenet121", partial(tvm.densenet121, num_classes=CLASSES), 32),
    ("GoogLeNet", "googlenet(aux_logits=False)", partial(tvm.googlenet, num_classes=CLASSES, aux_logits=False, init_weights=False), 32),
    ("Inception v3", "inception_v3(aux_logits=False)", partial(tvm.inception_v3, num_classes=CLASSES, aux_logits=False, init_weights=False), 75),
    ("ConvNeXt", "convnext_tiny", partial(tvm.convnext_tiny, num_classes=CLASSES), 32),
    ("ViT", "VisionTransformer(32, 4, 6 layers, 192 wide)", partial(tvm.VisionTransformer, 32, 4, 6, 3, 192, 768, num_classes=CLASSES), 32),
    ("Swin", "swin_t", partial(tvm.swin_t, num_classes=CLASSES), 64),
    ("Swin V2", "swin_v2_t", partial(tvm.swin_v2_t, num_classes=CLASSES), 64),
    ("timm ResNet", "timm resnet18", _timm("resnet18"), 32),
    ("timm EfficientNet", "timm efficientnet_b0", _timm("efficientnet_b0"), 32),
    ("timm MobileNetV3", "timm mobilenetv3_small_100", _timm("mobilenetv3_small_100"), 32),
    ("timm ConvNeXt", "timm convnext_atto", _timm("convnext_atto"), 32),
    ("timm ViT", "timm vit_tiny_patch16_224 (img_size=32, patch 4)", lambda: __import__("timm").create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=CLASSES, img_size=32, patch_size=4), 32),
]  # fmt: skip


def run_zoo(batch: int, names: list[str] | None, markdown: bool) -> None:
    rows = []
    for family, label, build, size in ZOO:
        if names and family not in names and label not in names:
            continue
        try:
            torch.manual_seed(SEED)
            model = build().train()
        except ImportError:
            print(f"{family}: skipped (timm is not installed)")
            continue
        generator = torch.Generator().manual_seed(SEED)
        x = torch.randn(batch, 3, size, size, generator=generator)
        y = torch.randint(0, CLASSES, (batch,), generator=generator)
        setup = Setup.build(model, x, y)
        bp, (h1, h2) = setup.peaks((1, 2))
        setup.close()
        rows.append((family, label, size, len(setup.blocks), bp, h1 / bp, h2 / bp))
        print(f"{family:18s} T={len(setup.blocks):3d} bp={bp / 2**20:8.1f} MiB h1={h1 / bp:.2f} h2={h2 / bp:.2f}", flush=True)
    if markdown:
        print(f"\nbatch {batch}, {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
        print("| family | model measured | input | blocks | BP real peak (MiB) | h = 1 / BP | h = 2 / BP |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for family, label, size, blocks, bp, r1, r2 in rows:
            print(f"| {family} | `{label}` | {size}x{size} | {blocks} | {bp / 2**20:.1f} | {r1:.2f} | {r2:.2f} |")


# --------------------------------------------------------------------------- the balanced ResNet-18
def run_balance(batch: int, rounds: int, repeats: int, markdown: bool) -> None:
    torch.manual_seed(SEED)
    model = tvm.resnet18(num_classes=CLASSES).train()
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(batch, 3, 32, 32, generator=generator)
    y = torch.randint(0, CLASSES, (batch,), generator=generator)
    start = time.perf_counter()
    balanced_blocks = partition(model, balance="memory", example_input=x)
    balance_seconds = time.perf_counter() - start
    default = Setup.build(model, x, y)
    bp, (d1, d2) = default.peaks((1, 2))
    default.close()
    balanced = Setup.build(model, x, y, balanced_blocks)
    _, (b1, b2) = balanced.peaks((1, 2))
    per_block = balanced.block_peaks(1)
    balanced.close()
    # Time: both cuts installed on twin models (same weights), one step each per round, ratio per round.
    import copy

    twin = copy.deepcopy(model)
    steps = {
        "default": Setup.build(model, x, y),
        "balanced": Setup.build(twin, x, y, partition(twin, balance="memory", example_input=x)),
    }
    ratios = []
    fastest = {name: float("inf") for name in steps}
    with preserved_buffers([model, twin]):
        for setup in steps.values():
            setup.mpc(1)  # warm-up
        for round_index in range(rounds):
            seconds = {}
            order = list(steps.items()) if round_index % 2 == 0 else list(steps.items())[::-1]
            for name, setup in order:
                times = []
                for _ in range(repeats):
                    begin = time.perf_counter()
                    setup.mpc(1)
                    times.append(time.perf_counter() - begin)
                seconds[name] = min(times)
                fastest[name] = min(fastest[name], seconds[name])
            ratios.append(seconds["balanced"] / seconds["default"])
    for setup in steps.values():
        setup.close()
    median = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [median, median, median]
    from lightning_mpc.core.blocks import describe

    print(f"balanced blocks: {[describe(b) for b in balanced_blocks]} (chosen in {balance_seconds:.1f} s)")
    print(f"BP real peak {bp / 2**20:.1f} MiB; default h1 {d1 / bp:.3f} h2 {d2 / bp:.3f}; "
          f"balanced h1 {b1 / bp:.3f} h2 {b2 / bp:.3f}")  # fmt: skip
    print("balanced cut, h=1, real peak while each block ran / BP: "
          + ", ".join(f"{peak / bp:.3f}" for peak in per_block))  # fmt: skip
    print(f"step time balanced / default at h=1: median {median:.3f}, quartiles {quartiles[0]:.3f}..{quartiles[2]:.3f}, "
          f"range {min(ratios):.3f}..{max(ratios):.3f} over {rounds} rounds; fastest steps "
          f"{fastest['balanced'] / fastest['default']:.3f}")  # fmt: skip
    if markdown:
        print(f"\nResNet-18, 32x32, batch {batch}, {platform.machine()}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads\n")  # fmt: skip
        print("| partition | blocks | h = 1 / BP | h = 2 / BP | step time / default (h = 1) |")
        print("|---|---:|---:|---:|---:|")
        print(f"| default (stem, 8 residual blocks, classifier) | {len(default.blocks)} | {d1 / bp:.2f} | {d2 / bp:.2f} | 1.00 |")
        print(f"| `balance=\"memory\"` | {len(balanced_blocks)} | {b1 / bp:.2f} | {b2 / bp:.2f} | "
              f"{median:.2f} ({quartiles[0]:.2f}..{quartiles[2]:.2f}) |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["zoo", "balance"])
    parser.add_argument("--batch", type=int, default=None, help="batch size (zoo: 32, balance: 128)")
    parser.add_argument("--rounds", type=int, default=20, help="balance: timed rounds")
    parser.add_argument("--repeats", type=int, default=3, help="balance: steps per cut and round (the fastest counts)")
    parser.add_argument("--models", nargs="*", default=None, help="zoo: families or model labels to run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.part == "zoo":
        run_zoo(args.batch or 32, args.models, args.markdown)
    else:
        run_balance(args.batch or 128, args.rounds, args.repeats, args.markdown)


if __name__ == "__main__":
    main()
