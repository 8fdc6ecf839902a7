"""Adversarial evaluation of zero-configuration cross-library matching.

Each *pair* is a source checkpoint and a target model from different code
bases. ``transfer(source, target)`` runs with no options, and every target
tensor is scored against a ground truth that is known, not guessed:

- **converter**: a library's own converter (timm's ``checkpoint_filter_fn``
  for ConvNeXt, Swin and RegNet) produces the true target tensors. Where the
  converter expects the original (FB / Microsoft) naming, a documented rename
  builds that naming from torchvision's; the rename only feeds the oracle and
  is never given to ``transfer``.
- **outputs**: the two models compute the same function, and the truth is a
  written key correspondence (or both libraries' registration order).
- **construction**: the source is the target's own state dict renamed by a
  realistic scheme (detector wrapper, camelCase modules, Keras leaf names...);
  the renaming is the truth.
- **unrelated**: nothing in the source belongs in the target.

Every converter and output oracle is *proven* before scoring: the truth is
loaded into a fresh target, which must reproduce the source model's output on
a fixed input (relative error under ``1e-4``, column ``oracle``); otherwise the
pair fails loudly instead of being scored against a wrong truth.

Every source tensor (running statistics, ``num_batches_tracked`` and zero
biases included) is re-randomized first, so no two hold the same values: a
target tensor is **correct** when it holds exactly its true value, **WRONG**
when it was loaded with anything else (or loaded where nothing belongs), and
**missed** when it was initialized although a true source existed.

Columns: ``tensors`` in the target (tied aliases not counted), ``truth`` those
with a true source, ``correct``, ``WRONG``, ``missed``, ``init-ok`` (rightly
initialized: no true source), ``init reasons`` (every initialized key, by the
report's reason), ``cov`` = correct / truth, ``s`` seconds (build included).

Usage::

    python benchmarks/matching_eval.py                  # every pair
    python benchmarks/matching_eval.py --pairs gpt2 bert --safetensors
    python benchmarks/matching_eval.py --json out.json --strict

``--safetensors`` hands ``transfer`` a ``.safetensors`` file of the source
instead of the in-memory state dict: such a file lists its keys sorted, which
is how most hub checkpoints arrive.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import Tensor, nn

from weightsurgery import transfer
from weightsurgery._grouping import group_keys
from weightsurgery.report import Report

__all__ = ["PAIRS", "Case", "OracleError", "Pair", "Score", "evaluate", "main"]

StateDict = dict[str, Tensor]
ORACLE_TOLERANCE = 1e-4


class OracleError(RuntimeError):
    """The ground truth of a pair could not be proven; the pair is not scored."""


@dataclass
class Case:
    """One built pair: the randomized source, a fresh target and the truth.

    Attributes:
        source: the checkpoint given to ``transfer`` (randomized, cloned).
        target: a freshly built target; ``transfer`` changes it in place.
        truth: target key -> the exact value that belongs there. A target key
            absent here has no true source and must be initialized.
        oracle_error: the relative output error of the truth-loaded target
            (``None`` for construction and unrelated pairs).
        container: in memory, hand over ``{container: source, "epoch": ...}``,
            a training checkpoint (Lightning's ``"state_dict"``).
    """

    source: StateDict
    target: nn.Module
    truth: StateDict
    oracle_error: float | None = None
    container: str | None = None


@dataclass(frozen=True)
class Pair:
    """A named source/target pair; ``build`` makes a fresh :class:`Case` each call."""

    name: str
    group: str  # "vision", "text", "unrelated"
    oracle: str  # "converter", "outputs", "construction", "unrelated"
    build: Callable[[], Case]


@dataclass(frozen=True)
class Load:
    """A WRONG load, or a miss, with everything the report said about it."""

    target: str
    source: str | None
    true_source: str | None
    target_shape: tuple[int, ...]
    source_shape: tuple[int, ...] | None
    strategy: str | None
    evidence: str


@dataclass
class Score:
    """One pair's outcome, tensor by tensor (tied target aliases are not counted)."""

    pair: str
    group: str
    oracle: str
    tensors: int = 0
    with_truth: int = 0
    correct: int = 0
    wrong: list[Load] = field(default_factory=list)
    missed: list[Load] = field(default_factory=list)
    abstained: Counter[str] = field(default_factory=Counter)  # reason -> count, every initialized key
    oracle_error: float | None = None
    seconds: float = 0.0

    @property
    def coverage(self) -> float:
        """Correct tensors over tensors that have a true source."""
        return self.correct / self.with_truth if self.with_truth else 1.0


# --- randomization, fingerprints, the output proof --------------------------------------------------


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every tensor of ``model`` distinct values, in place; the model stays usable.

    Floating tensors get 5% relative noise (absolute 0.05 for constants such as
    zero biases, unit norms and running variances, which stay positive);
    ``num_batches_tracked`` counters get distinct integers. Integer index
    buffers (``relative_position_index``, ``position_ids``) are left alone.
    """
    gen = torch.Generator().manual_seed(seed)
    seen: set[int] = set()
    counter = 1000 + 100_000 * seed  # distinct across models randomized with different seeds
    with torch.no_grad():
        for key, t in model.state_dict(keep_vars=True).items():
            if t.data_ptr() in seen:  # a tied alias: already randomized
                continue
            seen.add(t.data_ptr())
            if t.is_floating_point():
                std = float(t.float().std()) if t.numel() > 1 else 0.0
                t.add_(torch.randn(t.shape, generator=gen) * (0.05 * std if std > 0 else 0.05))
            elif key.endswith("num_batches_tracked"):
                counter += 1
                t.fill_(counter)
    return model.eval()


def cloned(model: nn.Module, prefix: str = "") -> StateDict:
    return {prefix + k: v.detach().clone() for k, v in model.state_dict().items()}


def _fingerprint(t: Tensor) -> tuple[int, str]:
    """Invariant under reshape and transpose, so a transposed truth still names its source."""
    d = t.detach().double()
    return t.numel(), f"{float(d.sum()):.9g}/{float((d * d).sum()):.9g}"


def prove(run_source: Callable[[], Tensor], target: nn.Module, truth: StateDict,
          run_target: Callable[[nn.Module], Tensor]) -> float:
    """Load ``truth`` into ``target`` and return the relative output error against the source.

    Raises:
        OracleError: the truth names keys the target lacks, or the outputs differ.
    """
    missing, unexpected = target.load_state_dict(truth, strict=False)
    if unexpected:
        raise OracleError(f"truth names keys the target lacks: {unexpected[:5]}")
    with torch.no_grad():
        want, got = run_source(), run_target(target.eval())
    error = float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))
    if not error < ORACLE_TOLERANCE:
        raise OracleError(f"truth-loaded target differs from the source: relative error {error:.2e}; "
                          f"target keys left out of the truth: {group_keys(missing)[:6]}")
    return error


def _image(size: int = 224) -> Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))


def _proven(src: nn.Module, make_target: Callable[[], nn.Module], truth_of: Callable[[StateDict, nn.Module], StateDict],
            x: Tensor | None = None, run: Callable[[Tensor], Tensor] | None = None) -> Case:
    """Randomize ``src``, compute the truth, prove it on ``x`` (an image by default), return a fresh case."""
    randomized(src)
    source, check, x = cloned(src), make_target(), _image() if x is None else x
    truth = truth_of(dict(source), check)
    error = prove(lambda: (run or src)(x), check, truth, lambda m: m(x))
    return Case(source, make_target(), truth, error)


def renamed(state: Mapping[str, Tensor], rules: Iterable[tuple[str, str]]) -> StateDict:
    """Apply regex ``rules`` in order to every key; a documented, explicit rename."""
    out: StateDict = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def in_order(source: Mapping[str, Tensor], target: nn.Module) -> StateDict:
    """Pair tensors by registration order (reshaping equal-sized ones); only trusted once proven."""
    tgt = target.state_dict()
    if len(source) != len(tgt):
        raise OracleError(f"registration orders differ in length: {len(source)} source, {len(tgt)} target tensors")
    out: StateDict = {}
    for (sk, sv), (tk, tv) in zip(source.items(), tgt.items()):
        if sv.numel() != tv.numel():
            raise OracleError(f"registration order breaks at {sk} {tuple(sv.shape)} vs {tk} {tuple(tv.shape)}")
        out[tk] = sv.reshape(tv.shape)
    return out


# --- scoring ---------------------------------------------------------------------------------------------


def _reason(evidence: str) -> str:
    text = evidence.lower()
    for word in ("excluded", "ambiguous", "unconfirmed", "shape", "no candidate"):
        if word in text:
            return word
    return text.split(":")[0][:40] or "unknown"


def score(pair: Pair, case: Case, report: Report) -> Score:
    """Compare every target tensor after the transfer with its truth."""
    out = Score(pair.name, pair.group, pair.oracle, oracle_error=case.oracle_error)
    state = case.target.state_dict()
    index: dict[tuple[int, str], str] | None = None

    def true_source(key: str) -> str | None:
        nonlocal index
        if key not in case.truth:
            return None
        if index is None:
            index = {_fingerprint(v): k for k, v in case.source.items()}
        return index.get(_fingerprint(case.truth[key]), "(derived: not one whole source tensor)")

    for key, rec in report.records.items():
        if rec.status == "tied":
            continue
        out.tensors += 1
        truth = case.truth.get(key)
        out.with_truth += truth is not None
        if rec.status in ("loaded", "adapted"):
            got = state[key]
            if truth is not None and got.shape == truth.shape and torch.equal(got, truth.to(got.dtype)):
                out.correct += 1
                continue
            out.wrong.append(Load(key, rec.source, true_source(key), rec.target_shape, rec.source_shape,
                                  rec.strategy, rec.evidence))
            continue
        out.abstained[_reason(rec.evidence)] += 1
        if truth is not None:
            src = true_source(key)
            out.missed.append(Load(key, None, src, rec.target_shape,
                                   tuple(case.source[src].shape) if src in case.source else None,
                                   rec.strategy, rec.evidence))
    return out


def evaluate(pair: Pair, *, as_safetensors: bool = False) -> Score:
    """Build ``pair``, run a zero-configuration ``transfer`` and score it.

    Args:
        pair: the pair to run.
        as_safetensors: hand ``transfer`` a ``.safetensors`` file instead of the
            in-memory state dict; such a file stores its keys sorted, so the
            registration order that structural alignment leans on is gone.
    """
    start = time.perf_counter()
    torch.manual_seed(0)
    case = pair.build()
    with tempfile.TemporaryDirectory() as tmp:
        source: Any = {case.container: case.source, "epoch": 3} if case.container else case.source
        if as_safetensors:
            source = Path(tmp) / "source.safetensors"
            save_file({k: v.contiguous() for k, v in case.source.items()}, str(source))
        report = transfer(source, case.target)
    result = score(pair, case, report)
    result.seconds = time.perf_counter() - start
    return result


# --- purpose-built targets -------------------------------------------------------------------------------


class NestedVGG16Features(nn.Module):
    """VGG-16's convolutional trunk, re-implemented as named stages (``stages.2.conv3``)."""

    def __init__(self) -> None:
        super().__init__()
        widths, c_in = [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3], 3
        self.stages = nn.ModuleList()
        for stage in widths:
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for i, c in enumerate(stage, 1):
                layers[f"conv{i}"], layers[f"act{i}"], c_in = nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), c
            layers["pool"] = nn.MaxPool2d(2)
            self.stages.append(nn.Sequential(layers))

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class _Attention(nn.Module):
    """Separate ``q_proj, k_proj, v_proj``, or one fused ``qkv`` ([q; k; v] rows)."""

    def __init__(self, dim: int, heads: int, *, fused: bool = False) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        parts = self.qkv(x).split(d, -1) if self.fused else (self.q_proj(x), self.k_proj(x), self.v_proj(x))
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in parts)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(b, n, d))


def _mlp(dim: int, hidden: int, names: tuple[str, str] = ("fc1", "fc2"), gelu: str = "none") -> nn.Module:
    return nn.Sequential(OrderedDict([(names[0], nn.Linear(dim, hidden)), ("act", nn.GELU(approximate=gelu)),
                                      (names[1], nn.Linear(hidden, dim))]))


class _EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, *, reorder: bool, fused: bool) -> None:
        super().__init__()
        if reorder:  # norms first, then the MLP, then attention: same function, other registration order
            self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)
            self.mlp, self.self_attn = _mlp(dim, hidden), _Attention(dim, heads, fused=fused)
        else:
            self.self_attn, self.ln1 = _Attention(dim, heads, fused=fused), nn.LayerNorm(dim, eps=1e-12)
            self.mlp, self.ln2 = _mlp(dim, hidden), nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        x = self.ln1(x + self.self_attn(x))
        return self.ln2(x + self.mlp(x))


class HandBert(nn.Module):
    """A post-LN BERT encoder written from scratch, with its own names."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, hidden: int, *,
                 reorder: bool = False, fused: bool = False) -> None:
        super().__init__()
        make = [_EncoderLayer(dim, heads, hidden, reorder=reorder, fused=fused) for _ in range(layers)]
        if reorder:
            self.layers = nn.ModuleList(make)
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, dim), nn.Embedding(512, dim)
        self.type_emb = nn.Embedding(2, dim)
        self.emb_ln = nn.LayerNorm(dim, eps=1e-12)
        if not reorder:
            self.layers = nn.ModuleList(make)
        self.pooler = nn.Linear(dim, dim)

    def forward(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1])
        x = self.emb_ln(self.tok_emb(ids) + self.pos_emb(pos) + self.type_emb(torch.zeros_like(ids)))
        for layer in self.layers:
            x = layer(x)
        return x


class _NanoAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.c_attn, self.c_proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.c_attn(x).split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, n, d))


class _NanoBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(dim), _NanoAttention(dim, heads), nn.LayerNorm(dim)
        self.mlp = _mlp(dim, 4 * dim, ("c_fc", "c_proj"), gelu="tanh")

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's layout: GPT-2 names under ``transformer.``, but ``nn.Linear`` (out, in) weights."""

    def __init__(self, vocab: int, positions: int, dim: int, layers: int, heads: int) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab, dim), "wpe": nn.Embedding(positions, dim),
            "h": nn.ModuleList(_NanoBlock(dim, heads) for _ in range(layers)), "ln_f": nn.LayerNorm(dim),
        })
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.transformer["wte"].weight = self.lm_head.weight  # tied, as nanoGPT does

    def forward(self, ids: Tensor) -> Tensor:
        t = self.transformer
        x = t["wte"](ids) + t["wpe"](torch.arange(ids.shape[1]))
        for block in t["h"]:
            x = block(x)
        return t["ln_f"](x)


def sliced_trunk() -> nn.Module:
    """A ResNet-50 cut after ``layer3`` and kept under ``trunk.`` (a typical detection/segmentation stem)."""
    r = torchvision.models.resnet50()
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
    return nn.ModuleDict({"trunk": nn.Sequential(OrderedDict((n, getattr(r, n)) for n in names))})


# --- the pairs: vision ---------------------------------------------------------------------------------------


def _tv(name: str, **kwargs: Any) -> nn.Module:
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def _resnet50_tv_timm() -> Case:
    # Same names in both libraries; the output proof confirms the identity correspondence.
    return _proven(_tv("resnet50"), lambda: timm.create_model("resnet50"), lambda s, t: s)


# torchvision ConvNeXt -> Facebook's original naming, the format timm's converter reads.
def _tv_convnext_to_fb(state: StateDict) -> StateDict:
    out: StateDict = {}
    leaves = {"block.0.": "dwconv.", "block.2.": "norm.", "block.3.": "pwconv1.", "block.5.": "pwconv2."}
    for key, value in state.items():
        m = re.fullmatch(r"features\.(\d+)\.(\d+)\.(.+)", key)
        if key.startswith("classifier."):
            key = key.replace("classifier.0.", "norm.").replace("classifier.2.", "head.")
        elif m and int(m[1]) % 2 == 0:  # stem (features.0) and downsamples (features.2, .4, .6)
            key = f"downsample_layers.{int(m[1]) // 2}.{m[2]}.{m[3]}"
        elif m:
            leaf = m[3]
            if leaf == "layer_scale":
                leaf, value = "gamma", value.reshape(-1)  # FB stores gamma as (C,), torchvision as (C,1,1)
            for old, new in leaves.items():
                leaf = leaf.replace(old, new)
            key = f"stages.{int(m[1]) // 2}.{m[2]}.{leaf}"
        out[key] = value
    return out


def _convnext_tv_timm() -> Case:
    from timm.models.convnext import checkpoint_filter_fn

    return _proven(_tv("convnext_tiny"), lambda: timm.create_model("convnext_tiny"),
                              lambda s, t: checkpoint_filter_fn(_tv_convnext_to_fb(s), t))


def _efficientnet_tv_timm() -> Case:
    return _proven(_tv("efficientnet_b0"), lambda: timm.create_model("efficientnet_b0"), in_order)


def _mobilenetv3_tv_timm() -> Case:
    # torchvision uses BN eps=1e-3; bn_eps only makes the proof exact (BN eps is not a tensor).
    # torchvision's classifier.0 Linear(960, 1280) is timm's 1x1 conv_head: reshaped by in_order.
    return _proven(_tv("mobilenet_v3_large"),
                              lambda: timm.create_model("mobilenetv3_large_100", bn_eps=1e-3), in_order)


_TV_VIT_TO_TIMM = [
    (r"^class_token$", "cls_token"), (r"^conv_proj\.", "patch_embed.proj."), (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."), (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."),
    (r"self_attention\.in_proj_(weight|bias)$", r"attn.qkv.\1"), (r"self_attention\.out_proj\.", "attn.proj."),
    (r"\.mlp\.0\.", ".mlp.fc1."), (r"\.mlp\.3\.", ".mlp.fc2."), (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
]


def _vit_tv_timm() -> Case:
    # torchvision's MultiheadAttention in_proj is [q; k; v], the layout of timm's fused qkv.
    return _proven(_tv("vit_b_16"), lambda: timm.create_model("vit_base_patch16_224"),
                              lambda s, t: renamed(s, _TV_VIT_TO_TIMM))


# torchvision Swin -> Microsoft's original naming, the format timm's converter reads
# (the converter then moves each stage-final downsample to the start of the next stage).
def _tv_swin_to_ms(state: StateDict) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if m and m[1] == "0":
            key = m[2].replace("0.", "patch_embed.proj.", 1).replace("2.", "patch_embed.norm.", 1)
        elif m and int(m[1]) % 2:
            key = f"layers.{int(m[1]) // 2}.blocks.{m[2]}"
            key = key.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
        elif m:
            key = f"layers.{int(m[1]) // 2 - 1}.downsample.{m[2]}"
        out[key] = value
    return out


def _swin_tv_timm() -> Case:
    from timm.models.swin_transformer import checkpoint_filter_fn

    return _proven(_tv("swin_t"), lambda: timm.create_model("swin_tiny_patch4_window7_224"),
                              lambda s, t: checkpoint_filter_fn(_tv_swin_to_ms(s), t))


def _regnet_tv_timm() -> Case:
    from timm.models.regnet import _filter_fn  # timm's own torchvision -> timm converter

    return _proven(_tv("regnet_y_400mf"), lambda: timm.create_model("regnety_004"),
                              lambda s, t: _filter_fn(s))


def _vgg_features_nested() -> Case:
    vgg = _tv("vgg16")  # the whole checkpoint is the source, classifier included
    return _proven(vgg, NestedVGG16Features, lambda s, t: in_order({k: v for k, v in s.items() if "features" in k}, t),
                   _image(64), run=vgg.features)


def _fasterrcnn_body_resnet50() -> Case:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    det = randomized(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None))
    source = cloned(det)  # backbone.body.*, backbone.fpn.*, rpn.*, roi_heads.*
    truth = {k.removeprefix("backbone.body."): v for k, v in source.items() if k.startswith("backbone.body.")}
    return Case(source, _tv("resnet50"), truth)


def _resnet50_sliced_trunk() -> Case:
    source = cloned(randomized(_tv("resnet50")))
    truth = {f"trunk.{k}": v for k, v in source.items() if not k.startswith(("layer4.", "fc."))}
    return Case(source, sliced_trunk(), truth)


# A re-implementation with its own module names, in camelCase (leaf names stay torch's).
_CAMEL = [
    (r"^conv1\.", "stemConv."), (r"^bn1\.", "stemNorm."), (r"^layer(\d)\.(\d)\.", r"stage\1.block\2."),
    (r"\.conv1\.", ".convA."), (r"\.bn1\.", ".normA."), (r"\.conv2\.", ".convB."), (r"\.bn2\.", ".normB."),
    (r"\.downsample\.0\.", ".shortcutConv."), (r"\.downsample\.1\.", ".shortcutNorm."), (r"^fc\.", "classifierHead."),
]
# Keras-style names and leaves (layout unchanged: only the names are Keras'); Keras keeps no num_batches_tracked.
_KERAS = [
    (r"^conv1\.weight$", "stem.conv.kernel"), (r"^bn1\.", "stem.bn."), (r"^layer(\d)\.(\d)\.", r"stage\1.block\2."),
    (r"downsample\.0\.weight$", "shortcut.conv.kernel"), (r"downsample\.1\.", "shortcut.bn."),
    (r"(conv\d)\.weight$", r"\1.kernel"), (r"^fc\.weight$", "predictions.kernel"), (r"^fc\.", "predictions."),
    (r"(bn\d?)\.weight$", r"\1.gamma"), (r"(bn\d?)\.bias$", r"\1.beta"), (r"running_mean$", "moving_mean"),
    (r"running_var$", "moving_variance"),
]


def _resnet18_camel() -> Case:
    truth = cloned(randomized(_tv("resnet18")))
    return Case(renamed(truth, _CAMEL), _tv("resnet18"), truth)


def _resnet18_keras() -> Case:
    state = cloned(randomized(_tv("resnet18")))
    truth = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return Case(renamed(truth, _KERAS), _tv("resnet18"), truth)


def _convnext_mmdet_backbone() -> Case:
    """An mmdetection-style detector: ``backbone.`` (timm ConvNeXt without its head), ``neck.``, ``bbox_head.``."""
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops import FeaturePyramidNetwork

    backbone = cloned(randomized(timm.create_model("convnext_tiny")))
    truth = {k: v for k, v in backbone.items() if not k.startswith("head.")}
    source = {f"backbone.{k}": v for k, v in truth.items()}
    source |= cloned(randomized(FeaturePyramidNetwork([96, 192, 384, 768], 256), seed=1), "neck.")
    source |= cloned(randomized(RetinaNetHead(256, 9, 80), seed=2), "bbox_head.")
    return Case(source, timm.create_model("convnext_tiny"), truth)


def _lightning_distill() -> Case:
    """A Lightning checkpoint of distillation: compiled student ``model._orig_mod.`` (ResNet-18), teacher
    ``teacher.`` (ResNet-50, same module names, many same shapes), under ``"state_dict"``."""
    truth = cloned(randomized(_tv("resnet18")))
    state = {f"model._orig_mod.{k}": v for k, v in truth.items()}
    state |= cloned(randomized(_tv("resnet50"), seed=1), "teacher.")
    return Case(state, _tv("resnet18"), truth, container="state_dict")


# --- the pairs: text --------------------------------------------------------------------------------------------

_BERT = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 256}
_HF_BERT_TO_HAND = [
    (r"^embeddings\.word_embeddings\.", "tok_emb."), (r"^embeddings\.position_embeddings\.", "pos_emb."),
    (r"^embeddings\.token_type_embeddings\.", "type_emb."), (r"^embeddings\.LayerNorm\.", "emb_ln."),
    (r"^encoder\.layer\.", "layers."), (r"attention\.self\.query\.", "self_attn.q_proj."),
    (r"attention\.self\.key\.", "self_attn.k_proj."), (r"attention\.self\.value\.", "self_attn.v_proj."),
    (r"attention\.output\.dense\.", "self_attn.out_proj."), (r"attention\.output\.LayerNorm\.", "ln1."),
    (r"intermediate\.dense\.", "mlp.fc1."), (r"output\.dense\.", "mlp.fc2."), (r"output\.LayerNorm\.", "ln2."),
    (r"^pooler\.dense\.", "pooler."),
]


def _fuse_qkv(truth: StateDict) -> StateDict:
    """``q_proj, k_proj, v_proj`` -> one ``qkv`` holding [q; k; v] (rows for weights)."""
    out = {k: v for k, v in truth.items() if not re.search(r"\.[qkv]_proj\.", k)}
    for key in [k for k in truth if ".q_proj." in k]:
        out[key.replace(".q_proj.", ".qkv.")] = torch.cat([truth[key.replace(".q_", f".{p}_")] for p in "qkv"])
    return out


def _bert_hand(*, reorder: bool = False, fused: bool = False) -> Callable[[], Case]:
    def build() -> Case:
        from transformers import BertConfig, BertModel

        bert = BertModel(BertConfig(**_BERT))
        ids = torch.randint(0, 30522, (1, 16), generator=torch.Generator().manual_seed(2))
        return _proven(bert, lambda: HandBert(30522, 128, 2, 2, 256, reorder=reorder, fused=fused),
                       lambda s, t: (_fuse_qkv if fused else dict)(renamed(s, _HF_BERT_TO_HAND)),
                       ids, run=lambda x: bert(x).last_hidden_state)

    return build


def _bert_mlm_into_bert() -> Case:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    source = cloned(randomized(BertForMaskedLM(BertConfig(**_BERT))))  # bert.* + cls.predictions.*, no pooler
    truth = {k.removeprefix("bert."): v for k, v in source.items() if k.startswith("bert.")}
    return Case(source, BertModel(BertConfig(**_BERT)), truth)


def _gpt2_nanogpt() -> Case:
    from transformers import GPT2Config, GPT2Model

    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64, bos_token_id=0, eos_token_id=0)
    gpt = GPT2Model(config)
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(3))
    conv1d = ("c_attn.weight", "c_proj.weight", "c_fc.weight")  # Conv1D stores (in, out): Linear's transpose
    return _proven(gpt, lambda: NanoGPT(1000, 64, 64, 2, 2),
                   lambda s, t: {f"transformer.{k}": v.t() if k.endswith(conv1d) else v for k, v in s.items()},
                   ids, run=lambda x: gpt(x).last_hidden_state)


# --- the pairs: unrelated -------------------------------------------------------------------------------------


def _unrelated(make_source: Callable[[], nn.Module], make_target: Callable[[], nn.Module]) -> Callable[[], Case]:
    return lambda: Case(cloned(randomized(make_source())), make_target(), {})


def _bert_tiny() -> nn.Module:
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(**{**_BERT, "intermediate_size": 512}))


PAIRS: tuple[Pair, ...] = (
    Pair("tv.resnet50 -> timm.resnet50", "vision", "outputs", _resnet50_tv_timm),
    Pair("tv.convnext_tiny -> timm.convnext_tiny", "vision", "converter", _convnext_tv_timm),
    Pair("tv.efficientnet_b0 -> timm.efficientnet_b0", "vision", "outputs", _efficientnet_tv_timm),
    Pair("tv.mobilenet_v3_large -> timm.mobilenetv3_large_100", "vision", "outputs", _mobilenetv3_tv_timm),
    Pair("tv.vit_b_16 -> timm.vit_base_patch16_224", "vision", "outputs", _vit_tv_timm),
    Pair("tv.swin_t -> timm.swin_tiny_patch4_window7_224", "vision", "converter", _swin_tv_timm),
    Pair("tv.regnet_y_400mf -> timm.regnety_004", "vision", "converter", _regnet_tv_timm),
    Pair("tv.fasterrcnn_resnet50_fpn -> tv.resnet50", "vision", "construction", _fasterrcnn_body_resnet50),
    Pair("tv.vgg16 -> nested VGG16 features", "vision", "outputs", _vgg_features_nested),
    Pair("tv.resnet50 -> sliced trunk.(conv1..layer3)", "vision", "construction", _resnet50_sliced_trunk),
    Pair("camelCase resnet18 -> tv.resnet18", "vision", "construction", _resnet18_camel),
    Pair("Keras-leaf resnet18 -> tv.resnet18", "vision", "construction", _resnet18_keras),
    Pair("mmdet backbone.convnext -> timm.convnext_tiny", "vision", "construction", _convnext_mmdet_backbone),
    Pair("Lightning distill (student+teacher) -> tv.resnet18", "vision", "construction", _lightning_distill),
    Pair("hf.BertModel -> hand BERT", "text", "outputs", _bert_hand()),
    Pair("hf.BertModel -> hand BERT (reordered)", "text", "outputs", _bert_hand(reorder=True)),
    Pair("hf.BertModel -> hand BERT (fused qkv)", "text", "outputs", _bert_hand(fused=True)),
    Pair("hf.BertForMaskedLM -> hf.BertModel", "text", "construction", _bert_mlm_into_bert),
    Pair("hf.GPT2Model (Conv1D) -> nanoGPT (Linear)", "text", "outputs", _gpt2_nanogpt),
    Pair("tv.resnet18 -> timm.vit_tiny", "unrelated", "unrelated",
         _unrelated(lambda: _tv("resnet18"), lambda: timm.create_model("vit_tiny_patch16_224"))),
    Pair("bert-tiny -> tv.resnet18", "unrelated", "unrelated", _unrelated(_bert_tiny, lambda: _tv("resnet18"))),
    Pair("tv.convnext_tiny -> timm.efficientnet_b0", "unrelated", "unrelated",
         _unrelated(lambda: _tv("convnext_tiny"), lambda: timm.create_model("efficientnet_b0"))),
)


# --- presentation -----------------------------------------------------------------------------------------------

_COLUMNS = ("pair", "oracle", "tensors", "truth", "correct", "WRONG", "missed", "init-ok", "init reasons", "cov", "s")


def _row(s: Score) -> list[str]:
    reasons = ", ".join(f"{r} {n}" for r, n in s.abstained.most_common())
    oracle = s.oracle if s.oracle_error is None else f"{s.oracle} {s.oracle_error:.0e}"
    init_ok = sum(s.abstained.values()) - len(s.missed)
    return [s.pair, oracle, str(s.tensors), str(s.with_truth), str(s.correct), str(len(s.wrong)),
            str(len(s.missed)), str(init_ok), reasons or "-", f"{s.coverage:.0%}", f"{s.seconds:.1f}"]


def render_table(scores: list[Score]) -> str:
    rows = [list(_COLUMNS)] + [_row(s) for s in scores]
    t = [sum(getattr(s, a) for s in scores) for a in ("tensors", "with_truth", "correct")]
    wrong, missed = sum(len(s.wrong) for s in scores), sum(len(s.missed) for s in scores)
    init_ok = sum(sum(s.abstained.values()) - len(s.missed) for s in scores)
    rows.append(["TOTAL", "", str(t[0]), str(t[1]), str(t[2]), str(wrong), str(missed), str(init_ok), "",
                 f"{t[2] / t[1]:.0%}" if t[1] else "-", f"{sum(s.seconds for s in scores):.0f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i in (0, 1, 8) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def _shape(s: tuple[int, ...] | None) -> str:
    return "-" if s is None else "(" + ",".join(map(str, s)) + ")"


def render_details(scores: list[Score]) -> str:
    out: list[str] = []
    for s in scores:  # one detailed line per distinct evidence, then the other keys it covers
        by_evidence: dict[str, list[Load]] = {}
        for w in s.wrong:
            by_evidence.setdefault(f"{w.strategy}: {w.evidence}", []).append(w)
        for loads in by_evidence.values():
            w = loads[0]
            out.append(f"WRONG [{s.pair}] {w.target} {_shape(w.target_shape)} <- {w.source} {_shape(w.source_shape)} "
                       f"via {w.strategy}; truth: {w.true_source or 'nothing belongs here'}\n"
                       f"      evidence: {w.evidence}")
            if len(loads) > 1:
                rest = "; ".join(group_keys(x.target for x in loads[1:]))
                out.append(f"      +{len(loads) - 1} more, same evidence: {rest}")
    for s in scores:
        by_reason: dict[str, list[Load]] = {}
        for m in s.missed:
            by_reason.setdefault(_reason(m.evidence), []).append(m)
        for reason, loads in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
            keys, first = group_keys(m.target for m in loads), loads[0]
            out.append(f"missed [{s.pair}] {len(loads)} x {reason}: {'; '.join(keys[:4])}"
                       f"{' ...' if len(keys) > 4 else ''}\n      e.g. {first.target} {_shape(first.target_shape)}"
                       f" (truth {first.true_source} {_shape(first.source_shape)}): {first.evidence[:160]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run the pairs, print the table and the details; the exit status is 1 only with ``--strict``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="*", default=(), help="run only pairs whose name contains one of these")
    parser.add_argument("--safetensors", action="store_true",
                        help="give transfer a .safetensors file of the source (its keys come back sorted)")
    parser.add_argument("--json", help="also write every score, wrong load and miss to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any tensor was loaded into the wrong place")
    parser.add_argument("-q", "--quiet", action="store_true", help="the table only")
    args = parser.parse_args(argv)
    pairs = [p for p in PAIRS if not args.pairs or any(f.lower() in p.name.lower() for f in args.pairs)]
    scores: list[Score] = []
    for pair in pairs:
        try:
            scores.append(evaluate(pair, as_safetensors=args.safetensors))
        except ImportError as exc:  # transformers is a dev-only dependency
            print(f"skipped [{pair.name}]: {exc}", file=sys.stderr)
    print(render_table(scores))
    if not args.quiet:
        details = render_details(scores)
        print("\n" + details if details else "\nno wrong loads, no misses")
    if args.json:
        with open(args.json, "w") as fh:
            rows = [{**asdict(s), "abstained": dict(s.abstained), "coverage": s.coverage} for s in scores]
            json.dump(rows, fh, indent=1)
    return 1 if args.strict and any(s.wrong for s in scores) else 0


if __name__ == "__main__":
    sys.exit(main())
