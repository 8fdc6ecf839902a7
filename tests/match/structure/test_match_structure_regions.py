"""Evidence from parents: children of containers paired with certainty pair inside that pair; crossings are withdrawn."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from weightsurgery import transfer
from weightsurgery.match.plan import Action
from weightsurgery.match.planner import make_plan
from weightsurgery.match.target import TargetSpec
from weightsurgery.sources.checkpoint import TensorMeta


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and norm statistics, so that a wrong tensor shows in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


def quiet_transfer(src: object, dst: nn.Module, **kwargs: object):  # noqa: ANN201
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transfer(src, dst, **kwargs)


# --- an HF ResNet (shortcut registered first, named shortcut.{convolution,normalization}) into torchvision --------


def test_hf_shortcut_pairs_with_torchvision_downsample_and_gives_the_same_features() -> None:
    transformers = pytest.importorskip("transformers")
    torchvision = pytest.importorskip("torchvision")
    config = transformers.ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic",
        downsample_in_first_stage=False,
    )
    hf = randomized(transformers.ResNetModel(config))
    tv = torchvision.models.resnet18().eval()
    report = quiet_transfer(hf, tv)
    assert set(tv.state_dict()) - set(report.mapping) == {"fc.weight", "fc.bias"}
    assert report.mapping["layer2.0.downsample.1.weight"] == "encoder.stages.1.layers.0.shortcut.normalization.weight"
    evidence = report.plan.entries["layer2.0.downsample.1.running_var"].evidence
    assert "inside aligned containers encoder.stages.1.layers <-> layer2 " in evidence
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(x).last_hidden_state
        got = nn.Sequential(*list(tv.children())[:-2])(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# --- a 1x1 conv + BN neck registered first on one side, last on the other -------------------------------------


class NeckLast(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.neck_conv, self.neck_bn = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + self.neck_bn(self.neck_conv(x)))


class Neck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj, self.norm = nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c)


class NeckFirst(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.neck = Neck(c)
        self.conv_a, self.norm_a = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv_b, self.norm_b = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm_b(self.conv_b(torch.relu(self.norm_a(self.conv_a(x)))))
        return torch.relu(y + self.neck.norm(self.neck.proj(x)))


def neck_target() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), NeckLast(8), NeckLast(8), nn.Conv2d(8, 16, 3), NeckLast(16))


class NeckSource(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.stage = nn.Sequential(NeckFirst(8), NeckFirst(8))
        self.down = nn.Conv2d(8, 16, 3)
        self.last = NeckFirst(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.down(self.stage(self.stem(x))))


def test_neck_norms_pair_inside_their_blocks_not_across_them() -> None:
    source = randomized(NeckSource())
    target = neck_target().eval()
    report = quiet_transfer(source, target)
    assert set(report.mapping) == set(target.state_dict())
    for block, slot in (("1", "stage.0"), ("2", "stage.1"), ("4", "last")):
        assert report.mapping[f"{block}.neck_bn.weight"] == f"{slot}.neck.norm.weight"
        assert report.mapping[f"{block}.neck_conv.weight"] == f"{slot}.neck.proj.weight"
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_a_pair_that_crosses_its_blocks_is_withdrawn_with_a_reason() -> None:
    """Two blocks, no neck in the second: order alone would pair block 1's neck norm with block 2's norm."""
    from weightsurgery.match.base import MatchContext
    from weightsurgery.match.structure import match_structure

    f = lambda *s: TensorMeta(s, torch.float32)  # noqa: E731
    target = {"b1.c1.weight": f(8, 8, 3, 3), "b1.n1.weight": f(8), "b1.c2.weight": f(8, 8, 1, 1),
              "b1.n2.weight": f(8), "b2.c1.weight": f(8, 8, 3, 3), "b2.n1.weight": f(8),
              "b2.c3.weight": f(8, 8, 5, 5), "b2.n3.weight": f(8), "b2.c4.weight": f(8, 8, 7, 7)}
    source = {"l1.x.weight": f(8, 8, 3, 3), "l1.y.weight": f(8), "l1.p.weight": f(8, 8, 1, 1),
              "l2.x.weight": f(8, 8, 3, 3), "l2.y.weight": f(8), "l2.z.weight": f(8),
              "l2.q.weight": f(8, 8, 5, 5), "l2.r.weight": f(8), "l2.s.weight": f(8, 8, 7, 7)}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for key, meta in target.items():
                parent, name, _ = key.split(".")
                if not hasattr(self, parent):
                    setattr(self, parent, nn.Module())
                block = getattr(self, parent)
                layer = nn.Conv2d(8, 8, meta.shape[-1], bias=False) if len(meta.shape) == 4 else nn.LayerNorm(8, bias=False)
                setattr(block, name, layer)

    spec = TargetSpec.from_module(Net())
    assert list(spec.tensors) == list(target)
    result = match_structure(MatchContext(source, spec, list(spec.tensors), list(source)))
    mapping = {m.target: m.source for m in result.matches}
    truth = {"b1.c1.weight": "l1.x.weight", "b1.n1.weight": "l1.y.weight", "b1.c2.weight": "l1.p.weight",
             "b2.c1.weight": "l2.x.weight", "b2.c3.weight": "l2.q.weight", "b2.n3.weight": "l2.r.weight",
             "b2.c4.weight": "l2.s.weight"}
    assert all(truth.get(t) == s for t, s in mapping.items()), mapping
    assert mapping.get("b1.n2.weight") is None
    reasons = {a.target: a for a in result.abstentions}
    assert "b1.n2.weight" in reasons and reasons["b1.n2.weight"].candidates


# --- a renamed Linear (a Caffe port's conv6, a TF port's dense6) among exact names --------------------------------


class Port(nn.Module):
    def __init__(self, head: str) -> None:
        super().__init__()
        self.conv1_1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1_2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = head
        setattr(self, f"{head}6", nn.Linear(8 * 4 * 4, 32))
        setattr(self, f"{head}7", nn.Linear(32, 24))
        setattr(self, f"{head}8", nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1_2(torch.relu(self.conv1_1(x))))
        x = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        for n in (6, 7, 8):
            x = getattr(self, f"{self.head}{n}")(x)
        return x


def test_a_renamed_linear_with_a_unique_shape_loads_and_gives_the_same_logits() -> None:
    source, target = randomized(Port("conv")), Port("dense").eval()
    report = quiet_transfer(source, target)
    assert report.mapping["dense6.weight"] == "conv6.weight"
    assert report.plan.entries["dense7.bias"].strategy == "structure"
    assert set(report.mapping) == set(target.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


# --- abstentions name their candidates; "counterpart absent" only when none exists -------------------------------

_REGION = re.compile(r"sits in '([^']*)'|sits in the source")


@pytest.mark.parametrize("drop", [("pooler",), ("pooler", "cls")])
def test_counterpart_absent_only_when_no_unused_tensor_of_that_shape_is_in_the_region(drop: tuple[str, ...]) -> None:
    class Pooler(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dense = nn.Linear(8, 8)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Embedding(20, 8)
            self.encoder = nn.Sequential(*[nn.Linear(8, 8) for _ in range(3)], nn.LayerNorm(8))
            self.pooler = Pooler()

    source = {f"bert.{k}": TensorMeta.of(v) for k, v in Encoder().state_dict().items() if not k.startswith(drop)}
    if "cls" not in drop:
        source["cls.predictions.transform.dense.weight"] = TensorMeta((8, 8), torch.float32)
    plan = make_plan(source, TargetSpec.from_module(Encoder()))
    absent = {k: e for k, e in plan.entries.items() if e.evidence.startswith("counterpart absent")}
    assert absent, "the pooler's counterpart is absent"
    for key, entry in absent.items():
        assert entry.action is Action.INIT
        match = _REGION.search(entry.evidence)
        assert match, entry.evidence
        region = match.group(1) or ""
        shape = plan.entries[key].target_shape if hasattr(plan.entries[key], "target_shape") else None
        shape = shape or TargetSpec.from_module(Encoder()).tensors[key].shape
        lookalikes = [s for s in plan.unused if s.startswith(region) and tuple(source[s].shape) == tuple(shape)]
        assert not lookalikes, (key, lookalikes)


def test_every_structural_abstention_names_candidates_when_any_exist() -> None:
    """Same-shaped q/k/v siblings with unrelated names: left open, each naming the three candidates."""
    from weightsurgery.match.base import MatchContext
    from weightsurgery.match.structure import match_structure

    class Attn(nn.Module):
        def __init__(self, names: tuple[str, ...]) -> None:
            super().__init__()
            for name in names:
                setattr(self, name, nn.Linear(8, 8))
            self.out = nn.Linear(8, 4)

    spec = TargetSpec.from_module(nn.Sequential(nn.Conv2d(3, 8, 3), Attn(("a", "b", "c"))))
    source = {f"m.{k}": TensorMeta.of(v)
              for k, v in nn.Sequential(nn.Conv2d(3, 8, 3), Attn(("x", "y", "z"))).state_dict().items()}
    result = match_structure(MatchContext(source, spec, list(spec.tensors), list(source)))
    mapping = {m.target: m.source for m in result.matches}
    assert "1.a.weight" not in mapping
    reasons = {a.target: a for a in result.abstentions}
    for key in ("1.a.weight", "1.b.bias", "1.c.weight"):
        assert len(reasons[key].candidates) == 3, reasons[key]
        assert all(c in source for c in reasons[key].candidates)


def test_a_key_without_a_pairing_names_the_unused_tensors_of_its_shape() -> None:
    """``p`` has a bias and ``x`` has none: no module pairs, but the report names ``x.weight`` for ``p.weight``."""

    class Net(nn.Module):
        def __init__(self, name: str, bias: bool) -> None:
            super().__init__()
            setattr(self, name, nn.Linear(4, 4, bias=bias))
            self.head = nn.Linear(4, 3)

    source = {k: TensorMeta.of(v) for k, v in Net("x", False).state_dict().items()}
    plan = make_plan(source, TargetSpec.from_module(Net("p", True)))
    assert plan.mapping == {"head.weight": "head.weight", "head.bias": "head.bias"}
    entry = plan.entries["p.weight"]
    assert entry.action is Action.INIT
    assert entry.evidence.startswith("unpaired: unused source tensors sized (4, 4) exist (x.weight)"), entry.evidence
    assert plan.entries["p.bias"].evidence == "no candidate: no unused source tensor is sized (4,)"
