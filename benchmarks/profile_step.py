r"""Where one training step's time goes: cProfile of the hand-written step, fit's Pyro path
and fit's captured path, for the MLP 784-400-50 Bernoulli VAE at batch 128.

Python function calls per step do not depend on the machine's load, so they are the
robust part of this profile; CPU seconds per step (``time.process_time``, one thread by
default) are also given. The steps are those of ``benchmarks/throughput.py``: (a) the
pytorch/examples step; (c0) ``fit(capture=False)``'s inner step, ``loss_fn(x)``,
``backward``, one fused Adam (fit's default); (c) ``fit``'s default inner step, a
:class:`~pyro_vae.train.capture.CapturedStep` replay plus the same Adam.

Usage::

    python benchmarks/profile_step.py [--steps 30] [--threads 1] [--top 8]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import load_binarized_mnist
from pyro_vae.train.capture import CapturedStep

try:
    from throughput import ROOT, HandwrittenVAE, make_vae, vae_loss
except ImportError:  # run as a module from the repository root
    from benchmarks.throughput import ROOT, HandwrittenVAE, make_vae, vae_loss


def variants(x: torch.Tensor):
    hand = HandwrittenVAE()
    hand_opt = torch.optim.Adam(hand.parameters(), lr=1e-3)

    def handwritten(xb):
        hand_opt.zero_grad()
        recon, mu, logvar = hand(xb)
        loss = vae_loss(recon, xb, mu, logvar)
        loss.backward()
        hand_opt.step()
        loss.item()

    def pyro_path():
        vae = make_vae()
        loss_fn = Trace_ELBO()(vae.model, vae.guide)
        loss_fn(x[:128])
        params = list(vae.parameters())
        return vae, loss_fn, params, torch.optim.Adam(params, lr=1e-3, fused=True)  # as fit

    _, loss0, _, opt0 = pyro_path()

    def fit_pyro_path(xb):
        loss = loss0(xb)
        opt0.zero_grad(set_to_none=True)
        loss.backward()
        opt0.step()

    vae1, loss1, params1, opt1 = pyro_path()
    stepper = CapturedStep(loss1, params1, [vae1])

    def fit_captured(xb):
        stepper.step(xb)
        opt1.step()

    return {
        "handwritten": handwritten,
        "fit_pyro_path": fit_pyro_path,
        "fit_captured": fit_captured,
    }, stepper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument(
        "--data-dir", default=str(ROOT.parent / "shared" / "data" / "binarized-mnist")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(0)
    x = load_binarized_mnist(Path(args.data_dir), "valid").tensors[0][: 128 * args.steps]
    batches = list(x.split(128))
    steps, stepper = variants(x)
    with pyro.validation_enabled(False):  # as in fit's loop after its validated probe
        for name, step in steps.items():
            for xb in batches[:5]:  # warm-up (and, for the captured path, the recording)
                step(xb)
            t0 = time.process_time()
            for xb in batches:
                step(xb)
            cpu = (time.process_time() - t0) / len(batches)
            profiler = cProfile.Profile()
            profiler.enable()
            for xb in batches:
                step(xb)
            profiler.disable()
            stats = pstats.Stats(profiler)
            calls = stats.total_calls / len(batches)  # type: ignore[attr-defined]
            print(f"== {name}: {cpu * 1e3:.2f} ms CPU per step, {calls:.0f} Python calls per step")
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
            lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
            start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
            print("\n".join(lines[start : start + args.top + 1]))
    print(f"captured steps {stepper.num_captured_steps}, Pyro steps {stepper.num_pyro_steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
