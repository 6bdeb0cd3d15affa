"""The ``lipdeploy`` command: a click group whose subcommands live in their own modules and load on demand.

A new command is one module in this package holding the command, plus its line in :data:`COMMANDS`; options shared
between commands come from :mod:`lipdeploy.cli.options`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import click

from .. import __version__
from ..errors import InputError


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand as the group knows it before loading it: where it is, and its line in ``lipdeploy --help``."""

    target: str  # "module:attribute" of the click command
    summary: str  # shown by `lipdeploy --help` without importing the module (commands import torch)


# name -> command. Loaded on first use so that `lipdeploy --help` does not import torch.
COMMANDS: dict[str, LazyCommand] = {
    "bench": LazyCommand(
        "lipdeploy.cli.bench:bench_command", "Benchmark the dense DIP, deep decoders and LIP tickets."
    ),
    "export": LazyCommand("lipdeploy.cli.export:export_command", "Export a ticket to an ONNX model."),
    "find": LazyCommand("lipdeploy.cli.find:find_command", "Find tickets by iterative magnitude pruning."),
    "inspect": LazyCommand("lipdeploy.cli.inspect:inspect_command", "Per-layer structure of a ticket."),
    "restore": LazyCommand("lipdeploy.cli.restore:restore_command", "Restore an image with a deep image prior."),
    "run": LazyCommand("lipdeploy.cli.run:run_command", "Run an exported model in ONNX Runtime."),
}


class LipdeployGroup(click.Group):
    """Loads subcommands lazily and turns :class:`InputError` into a one-line message and exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module, _, attr = entry.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from :data:`COMMANDS`' summaries: click's own would import every command."""
        rows = [(name, COMMANDS[name].summary) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=LipdeployGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lipdeploy")
def cli() -> None:
    """lipdeploy: make lottery image priors (sparse deep image priors) genuinely sparse, and deploy them."""


def main() -> None:
    """The ``lipdeploy`` console script and ``python -m lipdeploy``."""
    cli(prog_name="lipdeploy")
