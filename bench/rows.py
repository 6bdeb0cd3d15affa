"""The results folder's on-disk layout, shared by the harness (which writes it) and the report (which reads it).

Kept apart from both so that the report never imports the harness: rebuilding a report from copied rows files needs
no fitting engine, and the harness and the report cannot drift on where rows and curves live.

Layout of a results folder ``DIR``:

- ``rows-<i>-<n>.jsonl``: one file per shard; a job's rows are ``{"type": "row", ...}`` records followed by one
  ``{"type": "job", ...}`` record (a job is finished exactly when its record is in some rows file);
- ``curves/<method>__<image>.json``: a fit's PSNR-over-time curve (names through :func:`slug`).
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def slug(text: str) -> str:
    """``text`` as a file-name part: every run of characters other than letters, digits, ``_ . -`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def curve_path(out: Path, method: str, image: str, seed: int | None = None) -> Path:
    """Where the fitting curve of ``method`` on ``image`` is stored in the results folder ``out`` (``seed``: a fit
    with another seed than the preset's own, ``..__seed<seed>.json``)."""
    tail = "" if seed is None else f"__seed{seed}"
    return out / "curves" / f"{slug(method)}__{slug(image)}{tail}.json"


class RowStore:
    """Rows of every shard in ``DIR/rows-*.jsonl``; appends go to this shard's file only."""

    def __init__(self, out: Path, shard: tuple[int, int]) -> None:
        self.out = out
        self.path = out / f"rows-{shard[0]}-{shard[1]}.jsonl"

    @staticmethod
    def read_all(out: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """(rows of finished jobs, job records by key). A torn last line (crash mid-write) is ignored, and so are the
        rows of a job without its record. A job recorded twice (``--redo``, or two shards racing) counts once: the
        record finished last (``finished_at``; records written before it existed count as oldest, the first file's
        first among them)."""
        by_key: dict[str, list[dict[str, Any]]] = {}
        jobs: dict[str, dict[str, Any]] = {}
        for path in sorted(out.glob("rows-*.jsonl")):
            pending: list[dict[str, Any]] = []
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("type") == "row":
                    pending.append(rec)
                elif rec.get("type") == "job":
                    key = rec["job"]
                    mine = [r for r in pending if r.get("job") == key]
                    pending = [r for r in pending if r.get("job") != key]
                    if key not in jobs or rec.get("finished_at", "") > jobs[key].get("finished_at", ""):
                        jobs[key] = rec
                        by_key[key] = mine
        return [r for key in jobs for r in by_key[key]], jobs

    def done(self) -> set[str]:
        """Keys of the jobs finished in any shard's rows file of this folder."""
        return set(self.read_all(self.out)[1])

    def append(self, key: str, kind: str, rows: list[dict[str, Any]], seconds: float, env_id: str) -> None:
        """Record job ``key`` as finished with ``rows``: one write, then an fsync, so a crash loses at most this job
        (its rows without the closing record are ignored by :meth:`read_all`)."""
        recs = [{"type": "row", "job": key, "env": env_id, **r} for r in rows]
        finished = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        recs.append({"type": "job", "job": key, "kind": kind, "seconds": round(seconds, 3), "rows": len(rows),
                     "finished_at": finished})  # fmt: skip
        data = "".join(json.dumps(r, allow_nan=True) + "\n" for r in recs)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
