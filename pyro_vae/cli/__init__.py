"""The ``pyro-vae`` command: argument parsing, a dispatch table and printing, no logic.

Each command module registers its parser with ``add_parser(s)`` and sets ``run`` (a
function of the parsed arguments that returns the exit status). Library errors
(:class:`ValueError`, :class:`~pyro_vae.train.loop.TrainingDivergedError`) become one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyro_vae.cli import inspect, semisupervised, train

__all__ = ["main"]


def parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    p = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs."
    )
    sub = p.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    inspect.add_parsers(sub)
    semisupervised.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-vae`` command; returns the exit status."""
    from pyro_vae.cli.run import dispatch

    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    return dispatch(args)
