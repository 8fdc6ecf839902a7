"""Quickstart: pretrain, save a Lightning-style checkpoint, transfer to a new task, fine-tune.

1. Train a small CNN on the handwritten digits 0-4 that scikit-learn ships.
2. Save it as a Lightning-style checkpoint: ``{"state_dict": {"model.…": …}, "epoch": …}``.
3. ``transfer()`` it into a new network whose head is for the digits 5-9: the
   body loads (the ``model.`` prefix is stripped), the head is initialized.
4. Fine-tune briefly on a few examples of 5-9 and compare accuracy with the same
   network from random init and from constant init.

Runs offline in well under a minute on 2 CPU cores::

    python examples/quickstart.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

from weightsurgery import transfer


class DigitNet(nn.Module):
    """A small CNN: a convolutional ``body`` and a linear ``head``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def split_digits(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    x, y = x[perm], y[perm]
    old, new = y < 5, y >= 5
    xn, yn = x[new], y[new] - 5
    few = torch.cat([torch.nonzero(yn == c).flatten()[:10] for c in range(5)])  # 10 shots per class
    rest = torch.ones(len(yn), dtype=torch.bool)
    rest[few] = False
    return {"pretrain": (x[old], y[old]), "finetune": (xn[few], yn[few]), "test": (xn[rest], yn[rest])}


def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], epochs: int, lr: float, seed: int) -> None:
    x, y = data
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    x, y = data
    return (model(x).argmax(1) == y).float().mean().item()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--finetune-epochs", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=None, help="where the checkpoint is saved (default: a temp dir)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    data = split_digits(args.seed)

    # 1-2. Pretrain on digits 0-4 and save a Lightning-style checkpoint.
    pretrained = DigitNet(5)
    train(pretrained, data["pretrain"], args.pretrain_epochs, 3e-3, args.seed)
    print(f"pretrained on digits 0-4: {len(data['pretrain'][1])} images, "
          f"train accuracy {accuracy(pretrained, data['pretrain']):.1%}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="weightsurgery-quickstart-"))
    ckpt_path = workdir / "epoch=7.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in pretrained.state_dict().items()},
                "epoch": args.pretrain_epochs - 1, "global_step": 0}, ckpt_path)

    # 3. Transfer into a network with a fresh head for digits 5-9.
    model = DigitNet(5)
    report = transfer(ckpt_path, model, exclude=["head.*"],  # same shape, but new classes
                      init={"*.weight": "normal(std=0.01)", "*.bias": "zeros"}, seed=args.seed)
    print()
    print(report)
    print()

    # 4. Fine-tune on 10 images per class and compare with random and constant init.
    results = {}
    runs = {
        "transferred": model,
        "random init": DigitNet(5),
        "constant init": transfer({}, DigitNet(5), init="constant(0.05)", seed=args.seed).model,
    }
    for name, net in runs.items():
        train(net, data["finetune"], args.finetune_epochs, 3e-3, args.seed)
        results[name] = accuracy(net, data["test"])
    print(f"fine-tuned on {len(data['finetune'][1])} images of digits 5-9, "
          f"tested on {len(data['test'][1])} held-out images:")
    for name, acc in results.items():
        print(f"  {name:<14} {acc:6.1%}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
