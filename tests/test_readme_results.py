"""The README's result blocks are copies of committed result files: a rebuilt report that changes them must be copied
into the README too, so the README never shows numbers the results folder no longer has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# README marker -> the results file whose text the block between the markers must equal
BLOCKS = {
    "headline:cpu": "bench/results/cpu/headline.md",
    "claims:fidelity": "bench/results/fidelity/claims.md",
}


def test_readme_result_blocks_equal_their_files():
    readme = (ROOT / "README.md").read_text()
    for marker, path in BLOCKS.items():
        m = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", readme, re.S)
        assert m, f"README has no {marker} block"
        assert m.group(1) == (ROOT / path).read_text(), f"README's {marker} block differs from {path}: copy it"
