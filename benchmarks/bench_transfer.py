"""Side-by-side timings of transfer() against three baselines, in one run.

Baselines:
- **floor**: ``safetensors.torch.load_file`` plus a plain ``copy_`` into an
  already built model. That is the least any loader can do.
- **usual**: build the model (random init), ``torch.load(weights_only=True)``,
  then ``load_state_dict``: what most fine-tuning scripts do.
- **peers**: timm's ``create_model(pretrained=True)`` on a local file, and
  transformers' ``from_pretrained`` on a local folder (BERT).

weightsurgery runs twice: into a built model (compare with the floor), and
from a factory spec built on the meta device (compare with the usual path and
the peers, which also build).

Usage::

    python benchmarks/bench_transfer.py                  # resnet50, vit_base, bert-base
    python benchmarks/bench_transfer.py --models resnet50 --repeat 3

Each figure is the median of ``--repeat`` runs after one warm-up. Ratios are
against the floor and against the usual path, measured in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from weightsurgery import transfer


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: page cache, imports, allocator
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        del out
    return statistics.median(times)


def floor(path: Path, model: nn.Module) -> nn.Module:
    state = load_file(path)
    params = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    return model


def bench_timm(name: str, workdir: Path, repeat: int) -> list[tuple[str, float]]:
    import timm

    src = timm.create_model(name)
    st_path, pt_path = workdir / f"{name}.safetensors", workdir / f"{name}.pth"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, st_path)
    torch.save(src.state_dict(), pt_path)
    built = timm.create_model(name)

    def usual() -> nn.Module:
        model = timm.create_model(name)
        model.load_state_dict(torch.load(pt_path, weights_only=True, map_location="cpu"))
        return model

    def peer() -> nn.Module:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(st_path)})

    return [
        ("floor: load_file + copy_", timed(lambda: floor(st_path, built), repeat)),
        ("usual: build + torch.load + load_state_dict", timed(usual, repeat)),
        ("peer: timm create_model(pretrained=True)", timed(peer, repeat)),
        ("weightsurgery: transfer(file, built model)", timed(lambda: transfer(st_path, built), repeat)),
        ("weightsurgery: transfer(file, 'timm:NAME')", timed(lambda: transfer(st_path, f"timm:{name}"), repeat)),
    ]


def bench_bert(workdir: Path, repeat: int) -> list[tuple[str, float]]:
    try:
        from transformers import BertConfig, BertModel
    except ImportError:
        print("  (transformers is not installed: pip install '.[bench]')")
        return []
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = BertConfig()
    src = BertModel(config)
    folder = workdir / "bert"
    src.save_pretrained(folder)
    st_path = folder / "model.safetensors"
    pt_path = workdir / "bert.pth"
    torch.save(src.state_dict(), pt_path)
    built = BertModel(config)

    def usual() -> nn.Module:
        model = BertModel(config)
        model.load_state_dict(torch.load(pt_path, weights_only=True, map_location="cpu"), strict=False)
        return model

    def factory() -> nn.Module:
        return BertModel(config)

    return [
        ("floor: load_file + copy_", timed(lambda: floor_loose(st_path, built), repeat)),
        ("usual: build + torch.load + load_state_dict", timed(usual, repeat)),
        ("peer: transformers from_pretrained", timed(lambda: BertModel.from_pretrained(folder), repeat)),
        ("weightsurgery: transfer(file, built model)", timed(lambda: transfer(st_path, built), repeat)),
        ("weightsurgery: transfer(file, factory)", timed(lambda: transfer(st_path, factory), repeat)),
    ]


def floor_loose(path: Path, model: nn.Module) -> nn.Module:
    """The floor for a checkpoint whose names may carry a base-model prefix."""
    state = load_file(path)
    params = dict(model.state_dict(keep_vars=True))
    with torch.no_grad():
        for k, v in state.items():
            dst = params.get(k)
            if dst is None:
                dst = params.get(k.split(".", 1)[1])
            if dst is not None:
                dst.copy_(v)
    return model


def show(title: str, rows: list[tuple[str, float]]) -> None:
    if not rows:
        return
    base_floor, base_usual = rows[0][1], rows[1][1]
    print(f"\n{title}")
    print(f"  {'method':<46} {'median':>9} {'× floor':>8} {'× usual':>8}")
    for name, t in rows:
        print(f"  {name:<46} {t * 1e3:7.1f}ms {t / base_floor:8.2f} {t / base_usual:8.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224", "bert-base"])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack():
        workdir = Path(tmp)
        for name in args.models:
            rows = bench_bert(workdir, args.repeat) if name == "bert-base" else bench_timm(name, workdir, args.repeat)
            show(name, rows)


if __name__ == "__main__":
    main()
