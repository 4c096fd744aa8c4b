"""`python -m imagegate` is the `imagegate` command."""

from .cli import cli

cli()
