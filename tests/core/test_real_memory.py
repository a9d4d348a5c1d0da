"""Real memory (allocator bytes) of the interleaved schedule: what the process holds, not only what autograd saves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mpc import horizon_backward
from lightning_mpc.core.heads import build_heads, infer_head_spec
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.partition import run_blocks
from lightning_mpc.core.realmem import RealMemoryMeter, measure_peak
from lightning_mpc.recipes.networks import cifar_resnet_depth, mlp_network
from tests.reference import reference_gradients


def _heads(blocks: list[nn.Module], x: torch.Tensor) -> nn.ModuleList:
    shapes = []
    with torch.no_grad(), preserved_buffers(blocks):
        for block in blocks:
            x = block(x)
            shapes.append(x.shape)
    return build_heads([infer_head_spec(k, s, shapes[-1]) for k, s in enumerate(shapes[:-1])])


def _real_peaks(blocks: list[nn.Module], x: torch.Tensor, horizons: list[int], mode: str = "sliding") -> tuple[int, list[int]]:
    """Real peak of back-propagation and of horizon_backward at each horizon (gradients allocated beforehand)."""
    y = torch.randint(0, 10, (x.shape[0],))
    heads = _heads(blocks, x)

    def backprop() -> None:
        F.cross_entropy(run_blocks(blocks, x), y).backward()

    def mpc(h: int) -> None:
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, h, mode)

    with preserved_buffers(blocks):
        backprop()
        mpc(1)  # every .grad exists now: no step below pays for allocating them
        bp = measure_peak(backprop)[1].peak_bytes
        peaks = [measure_peak(mpc, h)[1].peak_bytes for h in horizons]
    return bp, peaks


def test_meter_counts_an_allocation_and_its_release() -> None:
    with RealMemoryMeter() as meter:
        kept = torch.empty(1 << 20, dtype=torch.float32)  # 4 MiB, kept
        temporary = torch.empty(1 << 21, dtype=torch.float32)  # 8 MiB, freed
        del temporary
    assert meter.result is not None
    assert 12 * 2**20 <= meter.peak_bytes < 13 * 2**20
    assert 4 * 2**20 <= meter.result.end_bytes < 5 * 2**20
    assert meter.result.method == "cpu-allocator-events"
    del kept


def test_meter_ignores_what_existed_before() -> None:
    before = torch.ones(1 << 21)
    with RealMemoryMeter() as meter:
        del before  # the allocator reports no event for a block allocated before the measurement
        fresh = torch.ones(1 << 10)
    assert meter.peak_bytes == 4 * 2**10
    del fresh


def test_peak_does_not_grow_with_depth() -> None:
    """The regression of the outside measurement: every block's output was kept until the step ended."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    _, (shallow,) = _real_peaks(list(cifar_resnet_depth(20)), x, [2])
    _, (deep,) = _real_peaks(list(cifar_resnet_depth(110)), x, [2])
    assert deep <= 1.15 * shallow, f"ResNet-110 h=2 holds {deep} B, ResNet-20 {shallow} B"


@pytest.mark.parametrize("mode", ["sliding", "block"])
def test_deep_resnet_at_h1_holds_a_small_fraction_of_backprop(mode: str) -> None:
    torch.manual_seed(0)
    bp, (h1,) = _real_peaks(list(cifar_resnet_depth(110)), torch.randn(4, 3, 32, 32), [1], mode)
    assert h1 <= 0.15 * bp, f"ResNet-110 h=1 holds {h1 / bp:.3f} of back-propagation's real peak"


def test_wide_mlp_at_h1_holds_at_most_half_of_backprop() -> None:
    torch.manual_seed(0)
    blocks = list(mlp_network(num_blocks=8, width=1024))
    bp, (h1, h2) = _real_peaks(blocks, torch.randn(512, 784), [1, 2])
    assert h1 <= 0.50 * bp, f"8-block MLP h=1 holds {h1 / bp:.3f} of back-propagation's real peak"
    assert h1 < h2 < bp


class _CloneInput(nn.Module):
    """The same function as ``block`` without touching the caller's tensor: for the naive reference."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.clone())


def _reference(
    blocks: list[nn.Module], heads: list[nn.Module], x: torch.Tensor, y: torch.Tensor, h: int, mode: str
) -> dict[int, torch.Tensor | None]:
    expected, _ = reference_gradients([_CloneInput(b) for b in blocks], heads, x, y, F.cross_entropy, h, mode)
    for module in [*blocks, *heads]:
        for param in module.parameters():
            param.grad = None
    return expected


class _InPlaceFirst(nn.Module):
    """A block whose forward starts by writing into its input (not declared with ``inplace=True``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mul_(0.5))


@pytest.mark.parametrize("horizon", [1, 2, 4])
@pytest.mark.parametrize("mode", ["sliding", "block"])
def test_in_place_first_op_at_a_cut_trains_exactly(horizon: int, mode: str) -> None:
    """VGG- and EfficientNet-style cuts: the block after the cut starts with an in-place op."""
    torch.manual_seed(0)
    blocks: list[nn.Module] = [
        nn.Linear(6, 8),
        nn.Sequential(nn.ReLU(inplace=True), nn.Linear(8, 8)),
        nn.Sequential(nn.Dropout(p=0.0, inplace=True), nn.Linear(8, 8)),
        nn.ReLU(inplace=True),
        nn.Linear(8, 3),
    ]
    blocks = [b.double() for b in blocks]
    heads = [nn.Linear(8, 3).double() for _ in range(len(blocks) - 1)]
    x = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    expected = _reference(blocks, heads, x, y, horizon, mode)
    horizon_backward(blocks, heads, x, y, F.cross_entropy, horizon, mode)
    _check(blocks, heads, expected)


def test_undeclared_in_place_block_is_cloned_when_named() -> None:
    from lightning_mpc.core.engine import HorizonEngine

    torch.manual_seed(0)
    blocks: list[nn.Module] = [nn.Linear(4, 4).double(), _InPlaceFirst(4).double(), nn.Linear(4, 2).double()]
    heads = [nn.Linear(4, 2).double(), nn.Linear(4, 2).double()]
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (3,))
    expected = _reference(blocks, heads, x, y, 2, "sliding")
    engine = HorizonEngine(blocks, heads, 2, clone_inputs=[1])
    engine.start(lambda p: F.cross_entropy(p, y))
    h = x
    for index, block in enumerate(blocks):
        h = engine.block_output(index, block(h))
    engine.finish(F.cross_entropy(h, y))
    _check(blocks, heads, expected)


def _check(blocks: list[nn.Module], heads: list[nn.Module], expected: dict[int, torch.Tensor | None]) -> None:
    for module in [*blocks, *heads]:
        for param in module.parameters():
            assert param.grad is not None, f"{type(module).__name__} got no gradient"
            torch.testing.assert_close(param.grad, expected[id(param)], rtol=1e-6, atol=1e-9)


def test_marks_split_the_measurement_into_intervals() -> None:
    with RealMemoryMeter() as meter:
        meter.mark()
        a = torch.empty(1 << 20)  # 4 MiB held from interval 0 on
        meter.mark()
        b = torch.empty(1 << 21)  # 8 MiB more, freed within interval 1
        del b
        meter.mark()
        c = torch.empty(1 << 18)  # 1 MiB
    assert meter.result is not None
    peaks = meter.result.interval_peaks
    assert len(peaks) == 3
    mib = 2**20
    assert 4 * mib <= peaks[0] < 4.5 * mib
    assert 12 * mib <= peaks[1] < 12.5 * mib
    assert 5 * mib <= peaks[2] < 5.5 * mib
    del a, c


def _window_model_case(name: str) -> tuple[list[nn.Module], torch.Tensor]:
    import torchvision

    from lightning_mpc import partition

    if name == "mlp":
        return list(mlp_network(num_blocks=8, width=512)), torch.randn(256, 784)
    if name == "resnet18":
        return partition(torchvision.models.resnet18(num_classes=10)), torch.randn(16, 3, 32, 32)
    depth = int(name.removeprefix("resnet"))
    return list(cifar_resnet_depth(depth)), torch.randn(4, 3, 32, 32)


@pytest.mark.parametrize("name", ["mlp", "resnet18", "resnet20", "resnet56", "resnet110"])
def test_window_model_predicts_the_real_peak(name: str) -> None:
    from lightning_mpc.core.memory import profile_real_memory

    torch.manual_seed(0)
    blocks, x = _window_model_case(name)
    y = torch.randint(0, 10, (x.shape[0],))
    heads = _heads(blocks, x)
    profile = profile_real_memory(blocks, list(heads), x, y, F.cross_entropy)
    with preserved_buffers(blocks):
        for mode in ("sliding", "block"):
            horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 1, mode)  # allocate every .grad
            for horizon in (1, 2, 4):
                _, measured = measure_peak(horizon_backward, blocks, list(heads), x, y, F.cross_entropy, horizon, mode)
                predicted = profile.predict_peak(horizon, mode)
                ratio = predicted / measured.peak_bytes
                assert 1 / 1.25 <= ratio <= 1.25, f"{name} {mode} h={horizon}: predicted/measured = {ratio:.2f}"
        bp_measured = measure_peak(lambda: F.cross_entropy(run_blocks(blocks, x), y).backward())[1].peak_bytes
    assert 1 / 1.25 <= profile.predict_peak(len(blocks)) / bp_measured <= 1.25
    parts = profile.breakdown(1)
    assert sum(parts.values()) == profile.predict_peak(1)


def test_a_meter_inside_another_profiler_session_refuses_instead_of_corrupting_it() -> None:
    with RealMemoryMeter(), pytest.raises(RuntimeError, match="another torch.profiler session.*HINT"):
        RealMemoryMeter().__enter__()


def test_a_free_of_memory_from_an_earlier_measurement_does_not_lower_the_peak() -> None:
    # the allocator reports the free of a tensor an earlier profiled session allocated; counted, it made the
    # second measurement's peak 1 MB instead of the 2 MB its own tensors held (found inside the full suite)
    with RealMemoryMeter():
        kept = torch.empty(1_000_000)  # 4 MB, alive after the first measurement
    with RealMemoryMeter() as meter:
        x = torch.empty(250_000)  # 1 MB
        del kept
        y = torch.empty(250_000)  # 1 MB
    assert meter.peak_bytes == 2_000_000
    assert meter.result is not None and meter.result.end_bytes == 2_000_000
    del x, y
