"""The ``lipdeploy`` command: a click group whose subcommands live in their own modules and load on demand."""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import InputError

# name -> "module:attribute" of the click command. Loaded lazily so `lipdeploy --help` stays fast.
COMMANDS: dict[str, str] = {
    "bench": "lipdeploy.bench_cmd:bench_command",
    "export": "lipdeploy.export_cmd:export_command",
    "find": "lipdeploy.find_cmd:find_command",
    "inspect": "lipdeploy.inspect_cmd:inspect_command",
    "restore": "lipdeploy.restore_cmd:restore_command",
    "run": "lipdeploy.run_cmd:run_command",
}


class LipdeployGroup(click.Group):
    """Loads subcommands lazily and turns :class:`InputError` into a one-line message and exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)

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
    cli()
