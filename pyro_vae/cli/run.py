"""Run a parsed command: set up ``torchrun`` when present, turn library errors into one
line and exit status 2, and Ctrl-C into exit status 130."""

from __future__ import annotations

import argparse
import sys

import torch

from pyro_vae import distributed
from pyro_vae.train.loop import TrainingDivergedError


def dispatch(args: argparse.Namespace) -> int:
    """Call ``args.run(args)`` with the process group of ``torchrun`` (if any) around it."""
    try:
        device = getattr(args, "device", None) or "cpu"
        ctx = distributed.init_from_env(device)
        try:
            if ctx is not None:
                args.device = str(distributed.rank_device(device))
                if not getattr(args, "distributed", True) and not ctx.is_main:
                    return 0  # commands that are not sharded run on rank 0 alone
            return args.run(args)
        finally:
            if ctx is not None:
                torch.distributed.destroy_process_group()
    except (ValueError, TrainingDivergedError) as e:
        print(f"pyro-vae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "pyro-vae: interrupted; the run directory holds the checkpoint of the last "
            "finished step or epoch (resume with --resume RUN_DIR).",
            file=sys.stderr,
        )
        return 130
