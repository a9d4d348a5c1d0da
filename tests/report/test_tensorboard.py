"""The TensorBoard custom-scalars layout: its structure, and the layout read back from a real event file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lightning_mpc import MPCStrategy, MPCTelemetry
from lightning_mpc.report.series import SECTIONS
from lightning_mpc.report.tensorboard import add_tensorboard_layout, custom_scalars_layout
from lightning_mpc.telemetry import block_key as _block_key
from tests.lightning.helpers import Classifier, loader, trainer, vector_data


def block_key(index: int, name: str) -> str:
    return _block_key("mpc", index, name)


def test_the_layout_groups_the_per_block_charts() -> None:
    layout = custom_scalars_layout()
    assert list(layout) == [f"mpc: {section.title}" for section in SECTIONS]
    loss = layout["mpc: Per-block loss"]["mpc: loss"]
    assert loss == ["Multiline", ["^mpc/block_[0-9]+/loss$"]]
    for category, charts in layout.items():
        for title, (kind, tags) in charts.items():
            assert kind == "Multiline" and len(tags) == 1, (category, title)
    tags = [re.compile(tags[0]) for charts in layout.values() for _, tags in charts.values()]
    for name in ("loss", "activation_bytes", "alignment", "forward_ms", "backward_ms"):
        assert sum(bool(t.search(block_key(3, name))) for t in tags) == 1, name
    assert next(iter(custom_scalars_layout("ff"))) == "ff: Per-block loss"


def test_other_loggers_are_left_alone() -> None:
    class NotTensorBoard:
        experiment = None

    assert add_tensorboard_layout([NotTensorBoard()]) == 0


def test_the_layout_is_in_the_event_file_of_an_mpc_run(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="TensorBoardLogger needs the tensorboard package")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    torch.manual_seed(0)
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    trainer(
        strategy=MPCStrategy(horizon=2), logger=logger, log_every_n_steps=1, max_steps=2, callbacks=[MPCTelemetry()]
    ).fit(Classifier(), loader(vector_data(n=16)))
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    (config,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout()
    layout.ParseFromString(config.tensor_proto.string_val[0])
    expected = custom_scalars_layout()
    assert [category.title for category in layout.category] == list(expected)
    for category in layout.category:
        assert [chart.title for chart in category.chart] == list(expected[category.title])
        for chart in category.chart:
            assert list(chart.multiline.tag) == expected[category.title][chart.title][1]
    scalars = set(events.Tags()["scalars"])
    assert block_key(0, "loss") in scalars and any(
        re.search(chart.multiline.tag[0], block_key(0, "loss")) for chart in layout.category[0].chart
    )
