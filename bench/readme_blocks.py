"""The README's result blocks: text between ``<!-- NAME -->`` and ``<!-- /NAME -->`` markers that must equal a committed
results file, so the README never shows numbers the results folder no longer has (tests/test_readme_results.py).

After a report rebuild: ``python -m lipdeploy.bench.readme_blocks`` copies every block's file into the README.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# README marker -> the results file (relative to the repository root) whose text the block must equal
BLOCKS = {
    "headline:cpu": "bench/results/cpu/headline.md",
    "claims:fidelity": "bench/results/fidelity/claims.md",
}


def _pattern(marker: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(marker)} -->\n)(.*?)(<!-- /{re.escape(marker)} -->)", re.S)


def stale_blocks(readme: str, root: Path = ROOT) -> list[str]:
    """Markers whose README block is missing or differs from its file."""
    out = []
    for marker, path in BLOCKS.items():
        m = _pattern(marker).search(readme)
        if not m or m.group(2) != (root / path).read_text():
            out.append(marker)
    return out


def synced(readme: str, root: Path = ROOT) -> str:
    """The README text with every block replaced by its file's text (a missing marker pair is an error)."""
    for marker, path in BLOCKS.items():
        pat = _pattern(marker)
        if not pat.search(readme):
            raise ValueError(f"README has no <!-- {marker} --> ... <!-- /{marker} --> block")
        text = (root / path).read_text()
        readme = pat.sub(lambda m, text=text: m.group(1) + text + m.group(3), readme, count=1)
    return readme


def main() -> int:
    path = ROOT / "README.md"
    before = path.read_text()
    try:
        after = synced(before)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    if after != before:
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(after)
        tmp.replace(path)
    print(f"{path}: {'updated' if after != before else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
