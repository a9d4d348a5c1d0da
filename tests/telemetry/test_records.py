"""StepRecorder (the engine observer behind the telemetry) and the per-block epoch metric."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_mpc import HorizonEngine, SavedTensorMeter, horizon_backward
from lightning_mpc.core.memory import preserved_buffers
from lightning_mpc.core.observer import EngineObserver
from lightning_mpc.core.realmem import measure_peak
from lightning_mpc.telemetry import BlockwiseRatio, StepRecorder, block_hits
from tests.models import CASES


def _params(model: nn.Module, heads: nn.Module) -> list[Tensor]:
    return [*model.parameters(), *heads.parameters()]


@pytest.mark.parametrize(
    ("name", "horizon", "mode"),
    [
        ("mlp", 1, "sliding"),
        ("mlp", 2, "sliding"),
        ("mlp", 2, "block"),
        ("cnn_bn", 2, "sliding"),
        ("cnn_bn", 3, "block"),
        ("resnet18", 2, "sliding"),
    ],
)
def test_recorder_figures_match_an_unobserved_step(name: str, horizon: int, mode: str) -> None:
    torch.manual_seed(0)
    model, blocks, heads, x, y = CASES[name]()
    exclude = _params(model, heads)
    meter = SavedTensorMeter(exclude=exclude)
    with preserved_buffers([model, heads]), meter:
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon, mode)
    plain = {id(p): p.grad.clone() for p in exclude if p.grad is not None}
    for p in exclude:
        p.grad = torch.zeros_like(p)
    with preserved_buffers([model, heads]):
        unobserved = measure_peak(horizon_backward, blocks, list(heads), x, y, F.cross_entropy, horizon, mode)[1]
    for p in exclude:
        p.grad = torch.zeros_like(p)

    recorder = StepRecorder(last_block=len(blocks) - 1)
    with preserved_buffers([model, heads]):
        recorder.start_memory(saved_bytes=True, exclude=exclude)
        horizon_backward(blocks, list(heads), x, y, F.cross_entropy, horizon, mode, observer=recorder)
        recorder.stop_memory()
    record = recorder.record
    assert record.complete
    # Observing changes nothing: same gradients, the same saved bytes, about the same real peak.
    for p in exclude:
        if id(p) in plain:
            torch.testing.assert_close(p.grad, plain[id(p)], rtol=0, atol=0)
    assert record.peak_saved_bytes == meter.peak_bytes
    assert record.peak_memory_bytes is not None
    assert 0.9 <= record.peak_memory_bytes / unobserved.peak_bytes <= 1.1
    # Real memory per block: every block measured; the largest is the step's peak.
    assert sorted(record.memory_bytes) == list(range(len(blocks)))
    assert max(record.memory_bytes.values()) == record.peak_memory_bytes
    assert all(value > 0 for value in record.memory_bytes.values())
    # Local losses: head k on x_{k+1}, computed independently.
    with torch.no_grad(), preserved_buffers([model, heads]):
        h = x
        for index, block in enumerate(blocks[:-1]):
            h = block(h)
            expected = F.cross_entropy(heads[index](h), y)
            loss = record.losses[index]
            assert not loss.requires_grad
            torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert len(blocks) - 1 not in record.losses  # the final loss is the caller's
    assert sorted(record.forward_ms) == list(range(len(blocks))) and all(t >= 0 for t in record.forward_ms.values())
    with_params = [i for i, b in enumerate(blocks) if any(True for _ in b.parameters())]
    assert all(record.backward_ms[i] > 0 for i in with_params)


def test_recorder_without_memory_or_timing_records_losses_only() -> None:
    torch.manual_seed(0)
    _, blocks, heads, x, y = CASES["mlp"]()
    recorder = StepRecorder(timing=False, last_block=len(blocks) - 1)
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 2, observer=recorder)
    record = recorder.record
    assert record.complete and sorted(record.losses) == list(range(len(blocks) - 1))
    assert record.forward_ms == {} and record.backward_ms == {}
    assert record.memory_bytes == {} and record.peak_memory_bytes is None
    recorder.clear()
    assert recorder.record.losses == {} and not recorder.record.complete


def test_signals_are_recorded_detached() -> None:
    recorder = StepRecorder()
    value = torch.tensor(2.0, requires_grad=True) * 3
    recorder.signal("goodness", 1, value)
    recorder.signal("angle", None, 0.5)
    assert recorder.record.signals[("angle", None)] == 0.5
    assert not recorder.record.signals[("goodness", 1)].requires_grad


def test_prediction_hook_and_output_gradient() -> None:
    torch.manual_seed(0)
    _, blocks, heads, x, y = CASES["mlp"]()
    seen: dict[int, Tensor] = {}
    recorder = StepRecorder(
        keep_output_gradient=True, on_prediction=lambda i, p: seen.__setitem__(i, p.detach()), last_block=len(blocks) - 1
    )
    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 2, observer=recorder)
    assert sorted(seen) == list(range(len(blocks)))  # every head, and the model output for the last block
    assert all(p.shape == (x.shape[0], 5) for p in seen.values())
    out = seen[len(blocks) - 1].clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(out, y), out)
    grad = recorder.record.output_gradient
    assert grad is not None and not grad.requires_grad
    torch.testing.assert_close(grad, expected)


def test_engine_reports_events_in_order_and_keeps_no_output() -> None:
    torch.manual_seed(0)
    _, blocks, heads, x, y = CASES["mlp"]()
    events: list[tuple] = []
    outputs: list[weakref.ref] = []

    class Log(EngineObserver):
        def step_started(self) -> None:
            events.append(("start",))

        def block_started(self, index: int) -> None:
            events.append(("block", index))

        def block_finished(self, index: int, output: Tensor) -> None:
            outputs.append(weakref.ref(output))
            events.append(("done", index))

        def local_loss(self, index: int, prediction: Tensor, loss: Tensor) -> None:
            events.append(("loss", index))

        def backward_started(self, index: int) -> None:
            events.append(("bwd", index))

        def backward_finished(self, index: int) -> None:
            events.append(("/bwd", index))

        def output_gradient(self, grad: Tensor | None) -> None:
            events.append(("grad", grad is not None))

        def step_completed(self) -> None:
            events.append(("end",))

    horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 2, observer=Log())
    gc.collect()
    assert all(ref() is None for ref in outputs), "block outputs outlived the step"
    assert events[0] == ("start",) and events[-1] == ("end",)
    assert events[1:6] == [("block", 0), ("done", 0), ("loss", 0), ("bwd", 0), ("/bwd", 0)]
    # sliding h=2: loss at depth 2 is carried back through blocks 1 and 0
    expected = [("block", 1), ("done", 1), ("loss", 1), ("bwd", 1), ("/bwd", 1), ("bwd", 1), ("/bwd", 1), ("bwd", 0)]
    assert events[6:14] == expected
    assert ("grad", True) in events
    # An engine without observer makes no calls (attribute exists and defaults to None).
    assert HorizonEngine(blocks, list(heads), 2).observer is None


def test_blockwise_ratio_equals_multiclass_accuracy_per_head() -> None:
    torch.manual_seed(0)
    classes, heads = 4, 3
    metric = BlockwiseRatio(heads)
    references = [MulticlassAccuracy(num_classes=classes, average="micro") for _ in range(heads)]
    for _ in range(5):
        target = torch.randint(0, classes, (7,))
        logits = [torch.randn(7, classes) for _ in range(heads)]
        hits = block_hits(logits, target)  # scores: the top-1 class is taken
        assert torch.equal(hits, block_hits([p.argmax(-1) for p in logits], target))
        metric.update(hits, torch.full((heads,), 7.0))
        for reference, p in zip(references, logits):
            reference.update(p, target)
    expected = torch.stack([r.compute() for r in references]).double()
    torch.testing.assert_close(metric.compute(), expected)
    metric.reset()
    assert metric.update_count == 0 and not metric.numerator.any() and not metric.denominator.any()
    # A zero denominator leaves a block out of the ratio.
    metric.update(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert metric.compute()[:2].tolist() == [1.0, 2.0] and torch.isnan(metric.compute()[2])


def test_block_hits_counts_per_token_predictions() -> None:
    target = torch.tensor([[0, 1], [2, 2]])
    predictions = [torch.tensor([[0, 1], [2, 0]]), torch.tensor([[1, 1], [1, 1]])]
    assert block_hits(predictions, target).tolist() == [3, 1]
