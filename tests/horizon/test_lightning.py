"""horizon="auto" and HorizonFinder inside Lightning."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from lightning_mpc import HorizonFinder, HorizonReport, MPCStrategy, select_horizon
from lightning_mpc.lightning.auto_horizon import log_report
from tests.lightning.helpers import Classifier, loader, mlp_net, trainer, vector_data
from tests.models import mlp


def _same_parameters(a: nn.Module, b: nn.Module) -> None:
    pairs = [*zip(a.named_parameters(), b.parameters()), *zip(a.named_buffers(), b.buffers())]
    for (name, p), q in pairs:
        torch.testing.assert_close(p, q, msg=lambda m, name=name: f"{name}: {m}")


class _RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.hparams: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.hparams.update(params if isinstance(params, dict) else vars(params))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass


def _data() -> Any:
    """Batches of 256 through 64-wide blocks: activations, not the parameters' gradients, dominate real memory."""
    return loader(vector_data(n=1024), batch_size=256)


def _fit_auto(**objective: Any) -> tuple[MPCStrategy, Classifier, _RecordingLogger]:
    torch.manual_seed(0)
    model = Classifier(net=mlp_net(depth=6, width=64))
    strategy = MPCStrategy(horizon="auto", probes=range(1, 7), **objective)
    logger = _RecordingLogger()
    trainer(strategy=strategy, logger=logger).fit(model, _data())
    return strategy, model, logger


@pytest.fixture(scope="module")
def ample() -> tuple[MPCStrategy, Classifier, _RecordingLogger]:
    """horizon="auto" with a budget every horizon fits in; every horizon probed."""
    return _fit_auto(memory_budget=10**9)


def test_auto_horizon_trains_end_to_end_with_the_choice(ample: tuple[MPCStrategy, Classifier, Any]) -> None:
    strategy, model, logger = ample
    report = strategy.horizon_report
    assert isinstance(report, HorizonReport)
    assert strategy.horizon == report.horizon == 6  # an ample budget buys back-propagation
    assert report.num_batches == 4 and report.num_blocks == 6
    assert logger.hparams["mpc/horizon"] == 6 and logger.hparams["mpc/horizon_objective"] == "memory_budget"
    assert model.mpc_heads is not None and len(model.mpc_heads) == 5


def test_auto_horizon_picks_within_a_tight_budget_and_trains_like_the_fixed_horizon(
    ample: tuple[MPCStrategy, Classifier, Any],
) -> None:
    # Budget between the measured peaks of h = 2 and h = 3: exhaustive probing makes the answer known.
    report = ample[0].horizon_report
    assert report is not None
    memory, alignment = report.memory, report.alignment
    budget = (memory[2] + memory[3]) // 2
    expected = max((h for h in memory if memory[h] <= budget), key=lambda h: (alignment[h], -h))
    strategy, auto_model, _ = _fit_auto(memory_budget=budget)
    assert strategy.horizon == expected and 1 <= expected <= 2
    # The selection leaves no trace: training equals a run with that horizon fixed from the same seed.
    torch.manual_seed(0)
    fixed_model = Classifier(net=mlp_net(depth=6, width=64))
    trainer(strategy=MPCStrategy(horizon=expected)).fit(fixed_model, _data())
    _same_parameters(auto_model, fixed_model)


def test_auto_horizon_min_alignment_in_lightning() -> None:
    strategy, _, _ = _fit_auto(min_alignment=0.5)
    report = strategy.horizon_report
    assert report is not None
    reaching = [h for h in report.alignment if report.alignment[h] >= 0.5]
    # ties in memory go to the better alignment, then the smaller horizon (choose_horizon's rule)
    assert strategy.horizon == min(reaching, key=lambda h: (report.memory[h], -report.alignment[h], h))


def test_impossible_budget_fails_at_setup_with_the_closest_value() -> None:
    torch.manual_seed(0)
    model = Classifier(net=mlp_net(depth=6))
    with pytest.raises(ValueError, match=r"Closest achievable: .* at h = 1\. HINT"):
        trainer(strategy=MPCStrategy(horizon="auto", memory_budget=100)).fit(model, loader(vector_data()))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left behind"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"horizon": "auto"}, "horizon='auto' needs exactly one objective, got none"),
        (
            {"horizon": "auto", "memory_budget": "1GB", "memory_weight": 1e-9},
            "exactly one objective, got memory_budget",
        ),
        ({"horizon": 2, "memory_budget": "1GB"}, "the horizon is fixed at 2"),
        ({"horizon": 2, "probes": [1, 2]}, "the horizon is fixed at 2"),
        ({"horizon": "best", "memory_budget": "1GB"}, "horizon must be an integer >= 1 or 'auto', got 'best'"),
        ({"horizon": "auto", "memory_budget": "2 parsecs"}, "Unknown unit"),
        ({"horizon": "auto", "min_alignment": 1.5}, r"Closest achievable: 1\.0"),
        ({"horizon": "auto", "min_alignment": 0.9, "auto_batches": 0}, "must be an integer >= 1, got 0"),
        ({"horizon": 0}, "horizon must be >= 1"),
    ],
)
def test_strategy_arguments_are_validated_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        MPCStrategy(**kwargs)
    assert "HINT:" in str(info.value)


def test_fixed_horizon_strategy_is_unchanged() -> None:
    strategy = MPCStrategy(horizon=3)
    assert strategy.horizon == 3 and strategy.horizon_report is None
    assert MPCStrategy(horizon="auto", memory_budget="2GB").horizon == "auto"  # until setup runs the selection


def test_horizon_finder_reports_without_training_and_leaves_the_module_alone() -> None:
    torch.manual_seed(0)
    model = Classifier(net=mlp_net(depth=6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finder = HorizonFinder(min_alignment=0.9, probes=range(1, 7))
    trainer(max_steps=0, callbacks=[finder]).fit(model, loader(vector_data()))
    assert finder.report is not None and 1 <= finder.report.horizon <= 6
    assert sorted(finder.report.alignment) == list(range(1, 7))
    assert not hasattr(model, "mpc_heads") and "_mpc_head_specs" not in vars(model)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value)


def test_horizon_finder_applies_its_choice_to_an_mpc_strategy() -> None:
    torch.manual_seed(0)
    model = Classifier(net=mlp_net(depth=6))
    strategy = MPCStrategy(horizon=1)
    finder = HorizonFinder(memory_budget=10**9)
    trainer(strategy=strategy, callbacks=[finder]).fit(model, loader(vector_data()))
    assert finder.report is not None and finder.report.horizon == 6
    assert strategy.horizon == 6
    # It trained with the new horizon: the same as back-propagation from the same seed.
    torch.manual_seed(0)
    plain = Classifier(net=mlp_net(depth=6))
    trainer(strategy=MPCStrategy(horizon=6)).fit(plain, loader(vector_data()))
    _same_parameters(model, plain)


def test_horizon_finder_needs_one_objective() -> None:
    with pytest.raises(ValueError, match="exactly one objective"):
        HorizonFinder()


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []
        self.config = self

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log(self, data: dict[str, Any], **kwargs: Any) -> None:
        self.logged.append(data)


class _OfflineWandb(WandbLogger):
    """A WandbLogger whose run is a recorder: no wandb process, no files."""

    def __init__(self) -> None:
        super().__init__(offline=True)
        self._fake = _FakeRun()

    @property
    def experiment(self) -> Any:  # type: ignore[override]
        return self._fake


class _TrainerStub:
    is_global_zero = True

    def __init__(self, loggers: list[Logger]) -> None:
        self.loggers = loggers


def test_report_plot_and_table_go_to_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.delenv("WANDB_MODE", raising=False)
    torch.manual_seed(0)
    _, blocks, heads, x, y = mlp(depth=4)
    report = select_horizon(blocks, list(heads), [(x, y)], F.cross_entropy, memory_budget="1GB")
    wandb_logger, other = _OfflineWandb(), _RecordingLogger()
    log_report(_TrainerStub([wandb_logger, other]), report)  # type: ignore[arg-type]
    (logged,) = wandb_logger.experiment.logged
    assert isinstance(logged["mpc/horizon_selection"], wandb.Image)
    assert isinstance(logged["mpc/horizon_table"], wandb.Table)
    assert other.hparams["mpc/horizon"] == report.horizon


def test_horizon_finder_selects_again_at_later_epochs() -> None:
    torch.manual_seed(0)
    model = Classifier(net=mlp_net(depth=6))
    strategy = MPCStrategy(horizon=1)
    finder = HorizonFinder(memory_weight=0.0, epochs=(0, 1), probes=range(1, 7))
    trainer(strategy=strategy, callbacks=[finder], max_epochs=2).fit(model, loader(vector_data()))
    assert sorted(finder.reports) == [0, 1]
    assert finder.report is finder.reports[1]
    # The model moved between the two selections, so the measurements differ.
    assert finder.reports[0].alignment != finder.reports[1].alignment
    assert strategy.horizon == finder.reports[1].horizon
    with pytest.raises(ValueError, match="epochs must be a non-empty sequence"):
        HorizonFinder(memory_weight=0.0, epochs=())
