"""Regenerate the report pages shown in docs/report.md (docs/images/*.png).

Two reports, made with the CLI exactly as a user would:

* the demo report (``metrology demo``): docs/images/demo-page-<i>.png, every page;
* an INCONCLUSIVE report: the demo station's capture (``metrology simulate``) inspected with
  ``--max-iterations 3``, so the solver stops before convergence and the measurement is not valid:
  the limits are shown grey, "not trusted", never green PASS / red FAIL
  (docs/images/inconclusive-page-<i>.png).

Usage (from the repository root; needs ``pdftoppm`` from poppler-utils; a few minutes on 2 cores)::

    python scripts/render_report_images.py [--dpi 60]

Everything is written into a temporary folder first; the PNGs then replace the old ones.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
DATA = ROOT / "metrology" / "data"


def cli(*args) -> int:
    """Run ``metrology ARGS`` in a fresh interpreter (as from a shell); return its exit code."""
    return subprocess.run([sys.executable, "-m", "metrology", *map(str, args)], cwd=ROOT).returncode


def pages(pdf: Path, prefix: str, dpi: int, out: Path) -> list[Path]:
    """Render every page of ``pdf`` to ``out/<prefix>-page-<i>.png``."""
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(out / f"{prefix}-page")], check=True)
    rendered = sorted(out.glob(f"{prefix}-page-*.png"))
    for p in rendered:  # pdftoppm pads the page number to the page count's width
        p.rename(out / f"{prefix}-page-{int(p.stem.rsplit('-', 1)[1])}.png")
    return sorted(out.glob(f"{prefix}-page-*.png"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dpi", type=int, default=60, help="resolution of the PNG pages (default 60)")
    args = ap.parse_args(argv)
    if shutil.which("pdftoppm") is None:
        sys.exit("render_report_images: pdftoppm (poppler-utils) is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if cli("demo", "--out", tmp / "demo") not in (0, 1, 3):
            sys.exit("render_report_images: metrology demo failed")
        if cli("simulate", "--station", DATA / "bench-4x-15x15.toml", "--lens", DATA / "good-4x.toml",
               "--out", tmp / "sim") != 0:
            sys.exit("render_report_images: metrology simulate failed")
        rc = cli("inspect", tmp / "sim" / "capture.tif", "--station", tmp / "sim" / "station.toml", "--spec",
                 DATA / "plan-4x-010.toml", "--out", tmp / "inconclusive", "--audit-db", tmp / "audit.sqlite",
                 "--operator", "docs", "--max-iterations", "3")
        if rc != 3:
            sys.exit(f"render_report_images: expected an INCONCLUSIVE inspection (exit 3), got exit {rc}")
        out = tmp / "png"
        out.mkdir()
        made = pages(next((tmp / "demo").glob("*.pdf")), "demo", args.dpi, out)
        made += pages(next((tmp / "inconclusive").glob("*.pdf")), "inconclusive", args.dpi, out)
        IMAGES.mkdir(parents=True, exist_ok=True)
        for old in IMAGES.glob("*-page-*.png"):
            old.unlink()
        for png in made:
            shutil.copy2(png, IMAGES / png.name)
            print(IMAGES / png.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
