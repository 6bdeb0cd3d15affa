"""Issue 26: corrupt result folders. ``bench --report-only`` and ``bench --list-jobs`` on a folder whose rows files,
preset.json or curve files are damaged answer with one ``error:`` line naming the file (and the line), exit 2."""

from __future__ import annotations

import json

import pytest
from cli_helpers import one_line_error, run

from lipdeploy.bench.rows import RowStore
from lipdeploy.errors import InputError

GOOD_ROW = {"type": "row", "job": "q/a", "env": "e", "image": "coffee", "metric": "psnr_best", "method": "dense",
            "value": 30.0, "unit": "dB"}  # fmt: skip
GOOD_JOB = {"type": "job", "job": "q/a", "kind": "quality", "seconds": 1.0, "rows": 1, "finished_at": "2026-12-01"}


def good_lines() -> bytes:
    return (json.dumps(GOOD_ROW) + "\n" + json.dumps(GOOD_JOB) + "\n").encode()


CORRUPT_ROWS = {
    "json-list": (b"[1, 2, 3]\n", "line 3: a JSON list"),
    "no-job": (json.dumps({"type": "job", "kind": "quality"}).encode() + b"\n", "line 3: a 'job' record without 'job'"),
    "undecodable": (b"\xff\xfe\x00garbage\n", "line 3: not UTF-8"),
    "broken-json": (b'{"type": "row", \n', "line 3: not valid JSON"),
    "job-not-text": (json.dumps({**GOOD_JOB, "job": 5}).encode() + b"\n", "line 3: field 'job' is a int"),
    "finished-not-text": (json.dumps({**GOOD_JOB, "finished_at": 3}).encode() + b"\n", "line 3: field 'finished_at'"),
    "value-a-dict": (json.dumps({**GOOD_ROW, "value": {}}).encode() + b"\n", "line 3: field 'value' is a dict"),
    "unknown-type": (json.dumps({"type": "nope", "job": "x"}).encode() + b"\n", "line 3: record type 'nope'"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_ROWS))
def test_corrupt_rows_file_one_line_naming_file_and_line(tmp_path, case):
    extra, text = CORRUPT_ROWS[case]
    rows = tmp_path / "rows-0-1.jsonl"
    rows.write_bytes(good_lines() + extra)
    with pytest.raises(InputError, match="rows-0-1.jsonl"):
        RowStore.read_all(tmp_path)
    one_line_error(run("bench", "--report-only", "-o", tmp_path), text)
    one_line_error(run("bench", "--preset", "ci", "--list-jobs", "-o", tmp_path), "rows-0-1.jsonl: " + text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows-0-1.jsonl"]  # no report half-built


def test_torn_last_line_is_still_skipped(tmp_path):
    (tmp_path / "rows-0-1.jsonl").write_bytes(good_lines() + b'{"type": "row", "job": "q/b", "val')
    rows, jobs = RowStore.read_all(tmp_path)
    assert list(jobs) == ["q/a"] and len(rows) == 1


def test_rows_file_that_is_a_directory(tmp_path):
    (tmp_path / "rows-0-1.jsonl").mkdir()
    one_line_error(run("bench", "--report-only", "-o", tmp_path), "rows-0-1.jsonl: is a directory")
    one_line_error(run("bench", "--preset", "ci", "--list-jobs", "-o", tmp_path), "is a directory")


@pytest.mark.parametrize(("content", "text"), [(b"{not json", "line 1: not valid JSON"), (b"[1]", "a JSON list"),
                                               (b"\xff\xff", "byte 0: not UTF-8")])  # fmt: skip
def test_broken_preset_json(tmp_path, content, text):
    (tmp_path / "rows-0-1.jsonl").write_bytes(good_lines())
    (tmp_path / "preset.json").write_bytes(content)
    one_line_error(run("bench", "--report-only", "-o", tmp_path), "preset.json: " + text)


def test_broken_curve_file(tmp_path):
    (tmp_path / "rows-0-1.jsonl").write_bytes(good_lines())
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "dense__coffee.json").write_text('{"method": "dense", "image": "coffee", "curve": [[1]]}')
    one_line_error(run("bench", "--report-only", "-o", tmp_path), "dense__coffee.json: not a curve file")
