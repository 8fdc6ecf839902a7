"""Peak memory of each loading path, each in a fresh process, side by side.

Each method runs once in its own subprocess. The figure is the process's peak
resident memory above its resident memory after imports, so it counts the
model, the checkpoint copies and any transient staging, and not torch itself.
The weights file is safetensors (and a .pth for the usual path). It is written
once and sits in the page cache, which is not counted as process memory.

Usage::

    python benchmarks/bench_memory.py                      # resnet50 and vit_base_patch16_224
    python benchmarks/bench_memory.py --models resnet50
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

METHODS = {
    "floor: built model + load_file + copy_": """
model = timm.create_model(NAME)
base = rss()
state = load_file(ST)
with torch.no_grad():
    params = model.state_dict(keep_vars=True)
    for k, v in state.items():
        params[k].copy_(v)
""",
    "usual: build + torch.load + load_state_dict": """
base = rss()
model = timm.create_model(NAME)
model.load_state_dict(torch.load(PT, weights_only=True, map_location="cpu"))
""",
    "peer: timm create_model(pretrained=True)": """
base = rss()
model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay={"file": ST})
""",
    "weightsurgery: transfer(file, built model)": """
model = timm.create_model(NAME)
base = rss()
transfer(ST, model)
""",
    "weightsurgery: transfer(file, 'timm:NAME')": """
base = rss()
model = transfer(ST, "timm:" + NAME).model
""",
}

PRELUDE = """
import resource, torch, timm, warnings
from safetensors.torch import load_file
from weightsurgery import transfer
warnings.simplefilter("ignore")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096
"""


def run(name: str, code: str, st: Path, pt: Path) -> dict[str, float]:
    script = PRELUDE + f"NAME, ST, PT = {name!r}, {str(st)!r}, {str(pt)!r}\n" + code + """
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(__import__("json").dumps({"peak_over_base": peak - base, "model_bytes": params}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224"])
    args = parser.parse_args(argv)
    import timm
    import torch
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model = timm.create_model(name)
            st, pt = Path(tmp) / f"{name}.safetensors", Path(tmp) / f"{name}.pth"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, st)
            torch.save(model.state_dict(), pt)
            print(f"\n{name}")
            print(f"  {'method':<46} {'peak over base':>15} {'× model size':>13}")
            for label, code in METHODS.items():
                r = run(name, code, st, pt)
                mib = r["peak_over_base"] / 2**20
                print(f"  {label:<46} {mib:12.0f} MiB {r['peak_over_base'] / r['model_bytes']:13.2f}")


if __name__ == "__main__":
    main()
