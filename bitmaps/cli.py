"""The ``bitmaps`` command line: parse, build a config, call the library, print.

No logic lives here beyond option parsing. Anything the user can get wrong surfaces as a
:class:`~bitmaps.errors.BitmapsError` (or a click usage error) and is printed as one line with exit
code 2; library imports happen inside the commands so that ``bitmaps --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from bitmaps import __version__
from bitmaps.errors import BitmapsError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bitmaps")
def cli() -> None:
    """bitmaps: distil a 1-bit BERT, export it, run it with XNOR-popcount kernels, measure it."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and exit code 2 for bad input, never a traceback for it."""
    try:
        cli.main(args=argv, prog_name="bitmaps", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        return 2
    except click.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return exc.exit_code
    except BitmapsError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
