"""The result blocks of bench/RESULTS.md: text between ``<!-- NAME -->`` and ``<!-- /NAME -->`` markers that must equal
a committed results file, so RESULTS.md never shows numbers the results folder no longer has
(tests/test_readme_results.py).

After a report rebuild: ``python -m lipdeploy.bench.readme_blocks`` copies every block's file into RESULTS.md.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the document holding the blocks, relative to the repository root
DOCUMENT = "bench/RESULTS.md"
# marker -> the results file (relative to the repository root) whose text the block must equal
BLOCKS = {
    "headline:cpu": "bench/results/cpu/headline.md",
    "claims:fidelity": "bench/results/fidelity/claims.md",
    "noise:evidence": "bench/results/evidence/noise.md",
    "comparisons:evidence": "bench/results/evidence/comparisons.md",
}


def _pattern(marker: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(marker)} -->\n)(.*?)(<!-- /{re.escape(marker)} -->)", re.S)


def stale_blocks(document: str, root: Path = ROOT) -> list[str]:
    """Markers whose block is missing from ``document`` or differs from its file."""
    out = []
    for marker, path in BLOCKS.items():
        m = _pattern(marker).search(document)
        if not m or m.group(2) != (root / path).read_text():
            out.append(marker)
    return out


def synced(document: str, root: Path = ROOT) -> str:
    """``document`` with every block replaced by its file's text (a missing marker pair is an error)."""
    for marker, path in BLOCKS.items():
        pat = _pattern(marker)
        if not pat.search(document):
            raise ValueError(f"no <!-- {marker} --> ... <!-- /{marker} --> block")
        text = (root / path).read_text()
        document = pat.sub(lambda m, text=text: m.group(1) + text + m.group(3), document, count=1)
    return document


def main() -> int:
    path = ROOT / DOCUMENT
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
