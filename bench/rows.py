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

from lipdeploy.fileio import read_json_lines


def slug(text: str) -> str:
    """``text`` as a file-name part: every run of characters other than letters, digits, ``_ . -`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def curve_path(out: Path, method: str, image: str, seed: int | None = None) -> Path:
    """Where the fitting curve of ``method`` on ``image`` is stored in the results folder ``out`` (``seed``: a fit
    with another seed than the preset's own, ``..__seed<seed>.json``)."""
    tail = "" if seed is None else f"__seed{seed}"
    return out / "curves" / f"{slug(method)}__{slug(image)}{tail}.json"


# Fields of a rows-file record and the types they may have (a value may be a number, a string or null).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "type": (str,),
    "job": (str,),
    "finished_at": (str,),
    "kind": (str,),
    "env": (str, type(None)),
    "image": (str,),
    "metric": (str,),
    "method": (str, type(None)),
    "unit": (str, type(None)),
    "value": (int, float, str, bool, type(None)),
}


def record_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with one rows-file record (None if nothing): an unknown type, a missing ``job``, a field of the
    wrong type. :meth:`RowStore.read_all` refuses such a file with its name and the line number."""
    kind = rec.get("type")
    if kind not in ("row", "job"):
        return f"record type {kind!r} is neither 'row' nor 'job'"[:160]
    needed = ("job",) if kind == "job" else ("job", "metric")
    missing = [key for key in needed if key not in rec]
    if missing:
        return f"a {kind!r} record without {', '.join(repr(k) for k in missing)}"
    for key, types in _FIELD_TYPES.items():
        if key in rec and not isinstance(rec[key], types):
            return f"field {key!r} is a {type(rec[key]).__name__}, not {' or '.join(t.__name__ for t in types)}"
    return None


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
            for _, rec in read_json_lines(path, record_problem, "rows file"):
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
