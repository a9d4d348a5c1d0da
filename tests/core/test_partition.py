"""partition(): the blocks compose to the model; the registry, parameter-free merging, num_blocks, balance."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from torch import nn

import lightning_mpc
from lightning_mpc import BlockSpan, partition, register_partitioner, supported_models
from lightning_mpc.core.blocks import block_layout, hook_points, join_units, modifies_input_in_place, run_blocks
from lightning_mpc.core.hooks import BlockHooks, OutputShapeRecorder
from lightning_mpc.core.partition import merge_evenly, natural_blocks
from lightning_mpc.core.partitioners import REGISTRY, partitioner_for
from lightning_mpc.core.partitioners.balance import UnitMemory, best_cuts, window_bytes
from lightning_mpc.core.partitioners.registry import PartitionerRegistry
from tests.zoo import HAS_TIMM

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"]


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_blocks_compose_to_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=7).eval()
    blocks = partition(model)
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    assert len(blocks) == 2 + sum(len(layer) for layer in layers)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_blocks(blocks, x), model(x), rtol=0, atol=0)
    # The blocks share the model's parameters; nothing is copied.
    block_params = {id(p) for b in blocks for p in b.parameters()}
    assert block_params == {id(p) for p in model.parameters()}


def test_resnet_hooks_see_every_block_in_order_during_the_models_own_forward() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    blocks = partition(model)
    hooks = BlockHooks(blocks)
    recorder = OutputShapeRecorder()
    hooks.attach(recorder)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        hooks.attach(None)
        expected = x
        for index, block in enumerate(blocks):
            expected = block(expected)
            torch.testing.assert_close(recorder.outputs[index], expected)
    assert recorder.order == list(range(len(blocks)))
    torch.testing.assert_close(out, expected)
    hooks.remove()


def test_resnet_stem_and_classifier_spans() -> None:
    model = torchvision.models.resnet18(weights=None)
    blocks = partition(model)
    assert isinstance(blocks[0], BlockSpan) and hook_points(blocks[0]) == (model.conv1, model.maxpool)
    assert isinstance(blocks[-1], BlockSpan) and hook_points(blocks[-1]) == (model.avgpool, model.fc)
    assert hook_points(blocks[1]) == (model.layer1[0], model.layer1[0])


# --------------------------------------------------------------------------- nn.Sequential, parameter-free merging
def test_sequential_children_that_learn_are_the_blocks() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh()), nn.Linear(4, 2))
    assert partition(model) == list(model.children())


def test_parameter_free_children_join_the_block_before_them() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Dropout(0.0), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    blocks = partition(model)
    assert [list(b) if isinstance(b, BlockSpan) else [b] for b in blocks] == [
        [model[0], model[1], model[2]],
        [model[3], model[4]],
        [model[5]],
    ]
    assert hook_points(blocks[0]) == (model[0], model[2])
    # No block starts with the in-place ReLU, so no block input needs a copy.
    assert not any(modifies_input_in_place(b) for b in blocks)
    x = torch.randn(5, 3)
    torch.testing.assert_close(run_blocks(blocks, x), model(x))


def test_leading_parameter_free_children_join_the_first_block() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    blocks = partition(model)
    assert len(blocks) == 2 and hook_points(blocks[0]) == (model[0], model[2])


def test_one_block_per_child_is_kept_on_request() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert partition(model, merge_parameter_free=False) == list(model.children())


def test_frozen_children_do_not_count_as_learning() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    model[1].requires_grad_(False)
    assert len(partition(model)) == 2


def test_a_network_without_anything_to_learn_is_one_block() -> None:
    model = nn.Sequential(nn.ReLU(), nn.Tanh())
    assert len(partition(model)) == 1


def test_empty_sequential_is_refused() -> None:
    with pytest.raises(ValueError, match="empty nn.Sequential"):
        partition(nn.Sequential())


# --------------------------------------------------------------------------- num_blocks
def test_num_blocks_merges_consecutive_blocks_evenly() -> None:
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(7)])
    blocks = partition(model, num_blocks=3)
    assert [len(b) if isinstance(b, BlockSpan) else 1 for b in blocks] == [3, 2, 2]
    x = torch.randn(2, 4)
    torch.testing.assert_close(run_blocks(blocks, x), model(x))
    with pytest.raises(ValueError, match=r"num_blocks=8 cannot be made from 7.*HINT.*balance='memory'"):
        partition(model, num_blocks=8)
    with pytest.raises(ValueError, match="positive integer"):
        partition(model, num_blocks=0)


def test_merge_evenly_keeps_every_unit_in_order() -> None:
    units = [nn.Linear(1, 1) for _ in range(10)]
    groups = [[u] for u in units]
    for count in range(1, 11):
        merged = merge_evenly(groups, count)
        assert len(merged) == count and [u for g in merged for u in g] == units
        sizes = [len(g) for g in merged]
        assert max(sizes) - min(sizes) <= 1


# --------------------------------------------------------------------------- BlockSpan
def test_block_span_references_an_entry_outside_its_members_without_registering_it() -> None:
    outer = nn.Sequential(nn.Linear(2, 2))
    span = BlockSpan(nn.Identity(), outer[0], entry=outer, exit=1, layout="channels_last")
    assert span.mpc_entry is outer and span.mpc_exit is outer[0]
    assert [id(p) for p in span.parameters()] == [id(p) for p in outer.parameters()]
    assert len(list(span.children())) == 2 and block_layout(span) == "channels_last"
    with pytest.raises(IndexError, match="not a member index.*HINT"):
        BlockSpan(nn.Identity(), entry=3)


def test_joined_units_keep_the_first_entry_and_the_last_exit_and_layout() -> None:
    a, b, c = nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)
    joined = join_units([BlockSpan(a, b), BlockSpan(c, layout="channels_last")])
    assert list(joined) == [a, b, c] and hook_points(joined) == (a, c) and block_layout(joined) == "channels_last"
    assert join_units([a]) is a


# --------------------------------------------------------------------------- registry
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.body = nn.Conv2d(4, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean((2, 3)))


class _WiderNet(_Net):
    pass


@pytest.fixture
def registry_entry() -> object:
    """Registers partitioners for _Net for one test and removes them afterwards."""
    yield
    REGISTRY.unregister(_Net)
    REGISTRY.unregister(_WiderNet)


def _cut_net(model: _Net) -> list[nn.Module]:
    """stem, body, pooled head"""
    return [model.stem, model.body, BlockSpan(_SpatialMean(), model.head, entry=1)]


class _SpatialMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def test_a_registered_partitioner_cuts_the_class_and_its_subclasses(registry_entry: object) -> None:
    register_partitioner(_Net, _cut_net)
    model = _WiderNet().eval()
    blocks = partition(model)
    assert len(blocks) == 3 and partitioner_for(model) is not None
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(run_blocks(blocks, x), model(x))
    assert f"{__name__}._Net" in supported_models()

    @register_partitioner(_WiderNet, description="the subclass's own cut")
    def cut_wider(model: _WiderNet) -> list[nn.Module]:
        return [nn.Sequential(model.stem, model.body), _cut_net(model)[-1]]

    assert len(partition(model)) == 2 and len(partition(_Net())) == 3  # the most specific class wins
    assert supported_models()[f"{__name__}._WiderNet"] == "the subclass's own cut"


def test_duplicate_registration_is_refused_unless_overridden(registry_entry: object) -> None:
    register_partitioner(_Net, _cut_net)
    with pytest.raises(ValueError, match=r"already has a partitioner.*HINT: pass override=True"):
        register_partitioner(_Net, _cut_net)
    register_partitioner(_Net, lambda model: [model.stem, nn.Sequential(model.body)], override=True)
    with pytest.raises(TypeError, match="needs a class or a qualified class name"):
        register_partitioner(3, _cut_net)  # type: ignore[arg-type]


def test_registration_by_qualified_name_needs_no_import() -> None:
    registry = PartitionerRegistry()
    registry.register(f"{__name__}._Net", _cut_net)
    assert registry.lookup(_WiderNet()) is not None and registry.lookup(nn.Linear(1, 1)) is None
    assert f"{__name__}._Net" in registry


def test_unknown_model_error_lists_what_is_supported_and_how_to_register() -> None:
    with pytest.raises(TypeError, match=r"Cannot partition a Linear.*supported: torch Sequential, torchvision ResNet.*"
                       r"HINT: pass a list of submodules.*register_partitioner\(Linear, fn\)"):  # fmt: skip
        partition(nn.Linear(2, 2))


def test_a_partitioner_returning_something_else_is_named(registry_entry: object) -> None:
    register_partitioner(_Net, lambda model: [model.stem, "body"])
    with pytest.raises(TypeError, match=r"Natural block 1 from the partitioner of _Net is 'body'"):
        partition(_Net())


def test_top_level_exports() -> None:
    assert lightning_mpc.register_partitioner is register_partitioner
    names = supported_models()
    for expected in ("torch.nn.modules.container.Sequential", "torchvision.models.resnet.ResNet",
                     "torchvision.models.vision_transformer.VisionTransformer", "timm.models.resnet.ResNet"):  # fmt: skip
        assert names.get(expected)


# --------------------------------------------------------------------------- families' special cases
@pytest.mark.parametrize("builder", [torchvision.models.GoogLeNet, torchvision.models.Inception3])
def test_auxiliary_classifiers_are_refused_with_the_builder_to_use(builder: type[nn.Module]) -> None:
    with torch.device("meta"):
        model = builder(init_weights=False)  # aux_logits=True by default
    with pytest.raises(ValueError, match=r"auxiliary classifiers.*HINT: build it with torchvision.models.\w+\(weights=None, aux_logits=False\)"):
        partition(model)


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed")
def test_timm_gradient_checkpointing_is_refused() -> None:
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    model.set_grad_checkpointing(True)
    with pytest.raises(ValueError, match=r"gradient checkpointing enabled.*HINT: call model.set_grad_checkpointing\(False\)"):
        partition(model)


def test_swin_blocks_declare_their_channels_last_output() -> None:
    model = torchvision.models.SwinTransformer([2, 2], 8, [1, 1], [1, 2], [2, 2], num_classes=3)
    blocks = partition(model)
    assert [block_layout(b) for b in blocks] == ["channels_last"] * (len(blocks) - 1) + [None]


def test_vit_class_token_and_position_embedding_belong_to_the_first_block() -> None:
    model = torchvision.models.VisionTransformer(16, 4, 2, 2, 8, 16, num_classes=3)
    first = partition(model)[0]
    owned = {id(p) for p in first.parameters()}
    assert id(model.class_token) in owned and id(model.encoder.pos_embedding) in owned
    assert hook_points(first) == (model.conv_proj, model.encoder.dropout)


def test_natural_blocks_list_the_finer_units_of_the_resnet_stem() -> None:
    model = torchvision.models.resnet18(weights=None)
    groups = natural_blocks(model)
    assert groups[0] == [model.conv1, model.bn1, model.relu, model.maxpool]


# --------------------------------------------------------------------------- balance="memory"
def _memory(held: int, trainable: bool = True, size: int = 1) -> UnitMemory:
    return UnitMemory(size, size, held, 0, held, 0, trainable)


def test_best_cuts_finds_the_smallest_largest_window_by_exhaustive_search() -> None:
    torch.manual_seed(0)
    for trial in range(20):
        n = 7
        memories = [
            UnitMemory(*(int(v) for v in torch.randint(1, 100, (6,))), trainable=bool(trial % 3 or i % 2))
            for i in range(n)
        ]
        learners = sum(m.trainable for m in memories)
        for k in range(1, learners + 1):
            bounds = best_cuts(memories, k)
            assert bounds[0] == 0 and bounds[-1] == n and len(bounds) == k + 1
            best = max(window_bytes(memories, a, b) for a, b in zip(bounds, bounds[1:]))
            feasible = []
            for cut in itertools.combinations(range(1, n), k - 1):
                edges = [0, *cut, n]
                if all(any(m.trainable for m in memories[a:b]) for a, b in zip(edges, edges[1:])):
                    feasible.append(max(window_bytes(memories, a, b) for a, b in zip(edges, edges[1:])))
            assert best == min(feasible)


def test_best_cuts_refuses_more_blocks_than_learning_units() -> None:
    with pytest.raises(ValueError, match=r"2 of which learn.*num_blocks=3.*HINT: pass 1 <= num_blocks <= 2"):
        best_cuts([_memory(1), _memory(1, trainable=False), _memory(1)], 3)


class _WideStem(nn.Module):
    """A stem whose activations dwarf the rest, as ResNet's do on small images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(4)
        self.body = nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1) for _ in range(3)])
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.conv(x))))
        return self.head(self.body(x).mean((2, 3)))


def _cut_wide_stem(model: _WideStem) -> list[object]:
    stem = [model.conv, model.bn, model.relu, model.pool]
    return [stem, *model.body, BlockSpan(_SpatialMean(), model.head, entry=1)]


def test_balance_cuts_inside_a_natural_block_where_the_activations_are() -> None:
    register_partitioner(_WideStem, _cut_wide_stem)
    try:
        torch.manual_seed(0)
        model = _WideStem()
        x = torch.randn(8, 3, 32, 32)
        default = partition(model)
        balanced = partition(model, balance="memory", example_input=x)
        assert len(default) == len(balanced) == 5
        assert hook_points(default[0]) == (model.conv, model.pool)
        assert hook_points(balanced[0]) == (model.conv, model.conv)  # the stem is cut after its convolution
        assert hook_points(balanced[1])[0] is model.bn
        model.eval()
        recorder = OutputShapeRecorder()
        hooks = BlockHooks(balanced)
        hooks.attach(recorder)
        with torch.no_grad():
            out = model(x)
        hooks.remove()
        assert recorder.order == list(range(len(balanced)))
        with torch.no_grad():
            torch.testing.assert_close(run_blocks(balanced, x), out)
        assert len(partition(model, balance="memory", num_blocks=2, example_input=x)) == 2
    finally:
        REGISTRY.unregister(_WideStem)


def test_balanced_resnet_composes_to_the_model() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    x = torch.randn(4, 3, 32, 32)
    blocks = partition(model, balance="memory", example_input=x, num_blocks=11)  # 11 units learn
    assert len(blocks) == 11
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(run_blocks(blocks, x), model(x))
    with pytest.raises(ValueError, match="HINT: pass example_input="):
        partition(model, balance="memory")
    with pytest.raises(ValueError, match="Unknown balance='time'"):
        partition(model, balance="time", example_input=x)  # type: ignore[arg-type]


def test_the_window_model_predicts_the_real_peak_of_the_balanced_cut() -> None:
    """The cost the balance minimises is the real peak at h = 1, within the window model's accuracy."""
    import torch.nn.functional as F

    from lightning_mpc import horizon_backward
    from lightning_mpc.core.heads import infer_heads
    from lightning_mpc.core.memory import preserved_buffers
    from lightning_mpc.core.partitioners.balance import measure_units
    from lightning_mpc.core.realmem import measure_peak

    register_partitioner(_WideStem, _cut_wide_stem)
    try:
        torch.manual_seed(0)
        model = _WideStem()
        x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,))
        units = [unit for group in natural_blocks(model) for unit in group]
        memories = measure_units(units, x)
        for count in (3, 5):
            bounds = best_cuts(memories, count)
            blocks = [join_units(units[a:b]) for a, b in zip(bounds, bounds[1:])]
            predicted = max(window_bytes(memories, a, b) for a, b in zip(bounds, bounds[1:]))
            heads = infer_heads(blocks, x)
            with preserved_buffers(blocks):
                horizon_backward(blocks, list(heads), x, y, F.cross_entropy, 1)  # allocate every .grad
                measured = measure_peak(horizon_backward, blocks, list(heads), x, y, F.cross_entropy, 1)[1].peak_bytes
            assert 0.8 <= predicted / measured <= 1.25, f"{count} blocks: predicted {predicted} B, measured {measured} B"
    finally:
        REGISTRY.unregister(_WideStem)
