"""The result blocks of bench/RESULTS.md are copies of committed result files: a rebuilt report that changes them must
be copied into RESULTS.md too (``python -m lipdeploy.bench.readme_blocks``), so it never shows numbers the results
folder no longer has."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipdeploy.bench import readme_blocks

ROOT = Path(__file__).resolve().parents[1]


def test_result_blocks_equal_their_files():
    stale = readme_blocks.stale_blocks((ROOT / readme_blocks.DOCUMENT).read_text())
    assert not stale, f"blocks {stale} differ from their files: run python -m lipdeploy.bench.readme_blocks"


def test_sync_replaces_only_the_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(readme_blocks, "BLOCKS", {"a": "a.md"})
    (tmp_path / "a.md").write_text("new\nlines\n")
    document = "intro\n<!-- a -->\nold\n<!-- /a -->\noutro\n"
    assert readme_blocks.stale_blocks(document, tmp_path) == ["a"]
    out = readme_blocks.synced(document, tmp_path)
    assert out == "intro\n<!-- a -->\nnew\nlines\n<!-- /a -->\noutro\n"
    assert readme_blocks.stale_blocks(out, tmp_path) == []
    with pytest.raises(ValueError, match="no <!-- a -->"):
        readme_blocks.synced("no markers\n", tmp_path)


def test_readme_links_to_the_results_and_holds_no_block():
    readme = (ROOT / "README.md").read_text()
    assert "bench/RESULTS.md" in readme
    assert all(f"<!-- {marker} -->" not in readme for marker in readme_blocks.BLOCKS)
