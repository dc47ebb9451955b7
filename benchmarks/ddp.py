r"""Training throughput of one process against ``torchrun`` with N processes.

Runs the default ``pyro-vae train`` (bundled MNIST, MLP 784-400-20, batch 128 per
process) for ``--epochs`` epochs, once as one process with ``--threads`` torch threads and
once under ``torchrun --nproc_per_node N`` with ``threads / N`` threads per process, so
both use the same cores. Reports the median examples/s over the epochs after the first,
read from each run's ``metrics.jsonl`` (under ``torchrun`` the count is over all ranks).
Note that N processes with batch 128 each take steps of 128·N examples: the comparison is
of throughput, not of the optimisation path.

Writes ``benchmarks/results/ddp-<date>.json``. Usage::

    python benchmarks/ddp.py [--nproc 2] [--threads 2] [--epochs 6]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], threads: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["examples_per_s"] for r in records[1:]]  # the first epoch warms up
    return {"examples_per_s_median": statistics.median(rates), "examples_per_s": rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    train = ["-m", "pyro_vae", "train", "--epochs", str(args.epochs), "--no-progress"]
    with tempfile.TemporaryDirectory() as tmp:
        one = run([sys.executable, *train, "--out", f"{tmp}/one"], args.threads, Path(tmp, "one"))
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc_per_node", str(args.nproc)]
        many = run(
            [*launcher, *train, "--out", f"{tmp}/many"],
            max(1, args.threads // args.nproc),
            Path(tmp, "many"),
        )
    date = datetime.date.today().isoformat()
    result = {
        "kind": "ddp",
        "date": date,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads,
        "nproc": args.nproc,
        "epochs": args.epochs,
        "one_process": one,
        "torchrun": many,
        "ratio": many["examples_per_s_median"] / one["examples_per_s_median"],
    }
    path = Path(args.results) / f"ddp-{date}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"1 process: {one['examples_per_s_median']:.0f} examples/s; {args.nproc} processes: "
        f"{many['examples_per_s_median']:.0f} examples/s (ratio {result['ratio']:.2f}); "
        f"wrote {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
