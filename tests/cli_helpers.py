"""What the CLI tests share: running a command in-process, and the one-line error contract of bad input."""

from __future__ import annotations

from click.testing import CliRunner, Result

from lipdeploy.cli import cli


def run(*args: object) -> Result:
    """``lipdeploy ARGS...`` in-process (arguments stringified); exceptions are caught into the result."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result: Result, text: str) -> None:
    """Exit 2, exactly one ``error:`` line containing ``text``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and text in errors[0], result.output
    assert "Traceback" not in result.output
