"""`lipdeploy inspect` and the CLI's error contract."""

import json

import pytest
import torch
from cli_helpers import run

from lipdeploy import __version__, load_ticket
from lipdeploy.testing import write_ticket_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_ticket_files(tmp_path_factory.mktemp("inspect"), amount=0.7)


def test_version_and_help():
    res = run("--version")
    assert res.exit_code == 0 and __version__ in res.output
    res = run("--help")
    assert res.exit_code == 0 and "inspect" in res.output
    assert run("inspect", "--help").exit_code == 0


def test_inspect_json_matches_masks(files):
    res = run("inspect", files["paper-masks"]["path"], "--weights", files["paper-masks"]["weights"], "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    ticket = load_ticket(files["paper-masks"]["path"], weights=files["paper-masks"]["weights"])
    assert report["density"] == pytest.approx(ticket.density)
    layers = {row["name"]: row for row in report["layers"]}
    for name, mask in ticket.masks.items():
        row = layers[name[: -len(".weight")]]
        assert row["nonzeros"] == int(mask.count_nonzero())
        per_kernel = mask.flatten(2).sum(-1)
        assert row["zero_kernels"] == int((per_kernel == 0).sum())
        assert row["unused_inputs"] == int((per_kernel.sum(0) == 0).sum())
        assert row["flops_nonzero"] <= row["flops_dense"]
    assert report["totals"]["nonzeros"] == ticket.kept_count


def test_inspect_flops_follow_size(files):
    small = json.loads(run("inspect", files["own-pt"]["path"], "--size", "32x32", "--json").output)
    big = json.loads(run("inspect", files["own-pt"]["path"], "--size", "64x128", "--json").output)
    assert big["totals"]["flops_dense"] == 8 * small["totals"]["flops_dense"]


def test_inspect_table(files):
    res = run("inspect", files["own-pt"]["path"])
    assert res.exit_code == 0
    assert "density" in res.output and "total" in res.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing.pt"], "no such file"),
        (["{masks}"], "--weights"),
        (["{own}", "--size", "100x100"], "multiples of"),
        (["{own}", "--size", "abc"], "HxW"),
    ],
)
def test_cli_errors_are_one_line(files, tmp_path, args, message):
    subst = {"{masks}": str(files["paper-masks"]["path"]), "{own}": str(files["own-pt"]["path"])}
    res = run("inspect", *[subst.get(a, a) for a in args])
    assert res.exit_code == 2
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "Traceback" not in res.output


def test_cli_refuses_pickle_with_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("PAYLOAD-RAN",))

    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    res = run("inspect", tmp_path / "evil.pt")
    assert res.exit_code == 2 and "refused" in res.output and "PAYLOAD-RAN" not in res.output


def test_inspect_reports_what_compaction_removes(files, tmp_path):
    ticket = load_ticket(files["own-pt"]["path"])
    masks = dict(ticket.masks)
    masks["9.1.weight"] = masks["9.1.weight"].clone()
    masks["9.1.weight"][:, :3] = 0  # the final conv never reads 3 outputs of the last 1x1 conv
    ticket.replace(masks=masks).save(tmp_path / "unread.pt")
    report = json.loads(run("inspect", tmp_path / "unread.pt", "--json").output)
    layers = {row["name"]: row for row in report["compaction"]["layers"]}
    assert layers["6.1"]["out_before"] - layers["6.1"]["out_after"] >= 3
    assert report["compaction"]["totals"]["unread_outputs"] >= 3
    assert "compaction" in run("inspect", tmp_path / "unread.pt").output


def test_atomic_output_leaves_nothing_on_failure_and_normal_permissions(tmp_path):
    import os

    from lipdeploy.fileio import atomic_output

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and list(tmp_path.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask
