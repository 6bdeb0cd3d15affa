"""The CLI layer: start-up without torch, ``python -m lipdeploy``, registry-backed choices, flag-free library errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lipdeploy.cli import COMMANDS, cli
from lipdeploy.cli.options import RegistryChoice
from lipdeploy.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_help_does_not_import_torch():
    """`lipdeploy --help` lists the commands from COMMANDS' summaries, without importing a command (they import
    torch, seconds of start-up)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lipdeploy.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    res = _python(code)
    assert res.returncode == 0, res.stderr
    assert "NO-TORCH" in res.stdout and all(name in res.stdout for name in COMMANDS)


def test_python_m_lipdeploy_help():
    res = subprocess.run(
        [sys.executable, "-m", "lipdeploy", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Usage: lipdeploy") and "restore" in res.stdout


def test_every_registered_command_loads():
    for name, entry in COMMANDS.items():
        cmd = cli.get_command(click.Context(cli), name)
        assert isinstance(cmd, click.Command) and cmd.name == name, entry.target


def test_registry_choice_reads_names_when_parsing():
    names = ["a"]
    choice = RegistryChoice(lambda: names)
    assert choice.convert("a", None, None) == "a"
    names.append("b")  # registered after the option was declared
    assert choice.convert("b", None, None) == "b"
    with pytest.raises(click.BadParameter):
        choice.convert("c", None, None)


def test_find_granularity_offers_patterns_registered_at_run_time(monkeypatch):
    from lipdeploy.cli.find import find_command
    from lipdeploy.patterns import PATTERNS

    monkeypatch.setitem(PATTERNS, "toy", PATTERNS["kernel"])
    res = CliRunner().invoke(cli, ["find", "--help"])
    assert res.exit_code == 0 and "toy" in res.output
    ctx = find_command.make_context("find", ["img.png", "--task", "denoise", "-o", "out", "--granularity", "toy"])
    assert ctx.params["granularity"] == "toy"


def test_library_prior_errors_do_not_name_flags_and_the_cli_does():
    from lipdeploy.cli.options import PRIOR_FLAGS
    from lipdeploy.priors import PriorSpec, make_prior

    both = PriorSpec(ticket=Path("t.pt"), arch="dip")
    with pytest.raises(InputError, match="not both") as lib:
        make_prior(both, seed=0)
    assert "--" not in str(lib.value)
    with pytest.raises(InputError, match="--ticket or --arch"):
        make_prior(both, seed=0, names=PRIOR_FLAGS)
    with pytest.raises(InputError, match="dd_k must be between") as lib:
        make_prior(PriorSpec(arch="dd", dd_k=0), seed=0)
    assert "--" not in str(lib.value)
