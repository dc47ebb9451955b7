"""Multi-process training with torch.distributed (gloo on the CPU), launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

SCRIPT = textwrap.dedent(
    """
    import sys
    from functools import partial

    import pyro
    import pyro.distributions as dist
    import torch
    import torch.distributed as td
    from torch import nn

    from pyro_vae import (VAE, BernoulliLikelihood, DiagonalNormalGuide, StandardNormalPrior,
                          binarize, fit, load_bundled_mnist)

    td.init_process_group("gloo")
    rank = td.get_rank()
    mode, out, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    splits = load_bundled_mnist()
    x = binarize(splits["train"].tensors[0][:512], seed=0)
    torch.manual_seed(0 if mode == "delta" else rank)  # "vae": ranks start apart on purpose
    if mode == "delta":
        # z is deterministic given x, so the update is exactly reproducible: a sum of
        # per-example gradients, whichever process computes them.
        x = x.reshape(-1, 784)
        decoder = nn.Sequential(nn.Linear(4, 32), nn.Softplus(), nn.Linear(32, 784))
        encoder = nn.Sequential(nn.Linear(784, 32), nn.Softplus(), nn.Linear(32, 4))

        def model(x):
            pyro.module("decoder", decoder)
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

        def guide(x):
            pyro.module("encoder", encoder)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Delta(encoder(x)).to_event(1))

        fit(model, guide, x, epochs=2, batch_size=batch_size, progress=False,
            optimizer=partial(torch.optim.SGD, lr=1e-4))
        params = {**{"d" + k: v for k, v in decoder.state_dict().items()},
                  **{"e" + k: v for k, v in encoder.state_dict().items()}}
    else:
        vae = VAE(StandardNormalPrior(4), BernoulliLikelihood.mlp(4, (1, 28, 28), (32,)),
                  DiagonalNormalGuide.mlp((1, 28, 28), 4, (32,)))
        xv = binarize(splits["valid"].tensors[0][:101], seed=1)
        history = fit(vae.model, vae.guide, x, epochs=2, batch_size=batch_size,
                      validation_data=xv, run_dir=out + "/run", progress=False)
        params = vae.state_dict()
        params["val_elbo"] = torch.tensor(history["val_elbo"])
        params["train_elbo"] = torch.tensor(history["train_elbo"])
    torch.save(params, f"{out}/params-{mode}-{td.get_world_size()}-{rank}.pt")
    td.destroy_process_group()
    """
)


def torchrun(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_processes_of_64_update_like_one_process_of_128(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    torchrun(1, str(script), "delta", str(tmp_path), "128", cwd=tmp_path)
    torchrun(2, str(script), "delta", str(tmp_path), "64", cwd=tmp_path)
    one = torch.load(tmp_path / "params-delta-1-0.pt")
    two = [torch.load(tmp_path / f"params-delta-2-{r}.pt") for r in (0, 1)]
    torch.manual_seed(0)
    init = torch.nn.Linear(4, 32).weight  # the decoder's first layer before training
    assert (one["d0.weight"] - init).abs().max() > 1e-3  # it trained
    for key, value in one.items():
        assert torch.equal(two[0][key], two[1][key]), key  # ranks agree exactly
        torch.testing.assert_close(two[0][key], value, rtol=1e-5, atol=1e-6)


def test_ranks_train_one_model_and_only_rank_0_writes(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    torchrun(2, str(script), "vae", str(tmp_path), "64", cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"params-vae-2-{r}.pt") for r in (0, 1)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key  # started apart, broadcast, in sync
    assert ranks[0]["val_elbo"][-1] > ranks[0]["val_elbo"][0]
    assert (ranks[0]["train_elbo"] < 0).all()
    run = tmp_path / "run"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
    ]


def test_torchrun_cli_trains_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "pyro_vae", "train", "--epochs", "1", "--hidden-dims", "32"]
    args += ["--latent-dim", "4", "--batch-size", "128", "--no-progress", "--out", str(out)]
    result = torchrun(2, *args, cwd=tmp_path)
    assert result.stdout.count("test ELBO") == 1  # rank 0 alone reports
    assert "2 processes" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    assert {"samples.png", "reconstructions.png", "test.json"} <= {p.name for p in out.iterdir()}
    resume = ["-m", "pyro_vae", "train", "--resume", str(out), "--epochs", "2", "--no-progress"]
    torchrun(2, *resume, cwd=tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]

    # evaluation shards the importance sampling over the ranks; rank 0 reports once
    evaluate = ["-m", "pyro_vae", "evaluate", str(out), "--num-samples", "50"]
    evaluate += ["--num-examples", "100"]
    result = torchrun(2, *evaluate, cwd=tmp_path)
    assert result.stdout.count("IS NLL") == 1
    two = json.loads((out / "evaluation.json").read_text())
    assert two["world_size"] == 2 and two["num_examples"] == 100
    single = subprocess.run(
        [sys.executable, *evaluate], capture_output=True, text=True, env=ENV, cwd=tmp_path
    )
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads((out / "evaluation.json").read_text())
    assert one["world_size"] == 1
    assert one["elbo"] == pytest.approx(two["elbo"], abs=1.0)  # same model, same data
    tolerance = max(4 * (one["nll_stderr"] ** 2 + two["nll_stderr"] ** 2) ** 0.5, 0.5)
    assert abs(one["nll"] - two["nll"]) < tolerance, (one["nll"], two["nll"])


def test_torchrun_trains_and_resumes_m2(tmp_path):
    """M2 under torchrun: every rank takes its share of each pair of batches; rank 0
    alone writes, and the run resumes like any other."""
    out = tmp_path / "m2"
    args = ["-m", "pyro_vae", "semisupervised", "--labels", "100", "--epochs", "1"]
    args += ["--hidden-dims", "16", "--latent-dim", "3", "--no-progress", "--out", str(out)]
    result = torchrun(2, *args, cwd=tmp_path)
    assert result.stdout.count("test accuracy") == 1
    assert json.loads((out / "config.json").read_text())["world_size"] == 2
    assert json.loads((out / "test.json").read_text())["test_accuracy"] > 0.2  # chance 0.1
    resume = ["-m", "pyro_vae", "semisupervised", "--resume", str(out), "--epochs", "2"]
    torchrun(2, *resume, "--no-progress", cwd=tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert all("val_accuracy" in json.loads(line) for line in lines)


SHARDED_LL = textwrap.dedent(
    """
    import sys

    import pyro
    import pyro.distributions as dist
    import torch
    import torch.distributed as td

    from pyro_vae import log_likelihood

    td.init_process_group("gloo")
    rank, out = td.get_rank(), sys.argv[1]
    # probabilistic PCA with the exact posterior as guide: every importance weight equals
    # p(x), so the estimate is log p(x) exactly, whoever computes it
    gen = torch.Generator().manual_seed(0)
    W, b, sigma = torch.randn(5, 2, generator=gen), torch.randn(5, generator=gen), 0.5
    marginal = dist.MultivariateNormal(b, W @ W.T + sigma**2 * torch.eye(5))
    # the same 7 rows on every rank (shards of 4 and 3)
    x = b + torch.randn(7, 5, generator=gen) @ torch.linalg.cholesky(marginal.covariance_matrix).T
    M_inv = torch.linalg.inv(W.T @ W + sigma**2 * torch.eye(2))
    seen = []

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, sigma).to_event(1), obs=x)

    def guide(x):
        seen.append(x.shape[0])
        with pyro.plate("data", x.shape[0]):
            loc = (x - b) @ W @ M_inv.T
            pyro.sample("z", dist.MultivariateNormal(loc, covariance_matrix=sigma**2 * M_inv))

    pyro.set_rng_seed(rank)
    ll = log_likelihood(model, guide, x, num_samples=10, particle_chunk=5)
    sharded_seen = list(seen)
    seen.clear()
    alone = None
    if rank == 1:  # one rank alone, no collective: must not wait for the others
        alone = log_likelihood(model, guide, x, num_samples=10, particle_chunk=5, shard=False)
        alone = {"estimate": alone.estimate, "seen": list(seen)}
    torch.save({"estimate": ll.estimate, "exact": marginal.log_prob(x), "seen": sharded_seen,
                "alone": alone}, f"{out}/ll-{rank}.pt")
    td.destroy_process_group()
    """
)


def test_log_likelihood_is_sharded_over_ranks_and_gathered_in_order(tmp_path):
    script = tmp_path / "sharded_ll.py"
    script.write_text(SHARDED_LL)
    torchrun(2, str(script), str(tmp_path), cwd=tmp_path)
    ranks = [torch.load(tmp_path / f"ll-{r}.pt") for r in (0, 1)]
    for r, shard_rows in ((0, 4), (1, 3)):
        got = ranks[r]
        assert got["estimate"].shape == (7,)  # every rank gets all the rows, in order
        torch.testing.assert_close(got["estimate"], got["exact"].double(), atol=1e-4, rtol=0)
        # after the runs that read the program on the whole batch (a trace and the particle
        # check), each rank's guide saw only its own shard, once per chunk of 5 particles
        probes = got["seen"][:-2]
        assert probes and probes == [7] * len(probes), got["seen"]
        assert got["seen"][-2:] == [shard_rows, shard_rows], got["seen"]
    alone = ranks[1]["alone"]  # shard=False: every row on this rank, the same values
    assert alone["seen"][len(probes) :] == [7, 7]
    torch.testing.assert_close(alone["estimate"], ranks[1]["exact"].double(), atol=1e-4, rtol=0)


def test_cuda_under_torchrun_without_gpu_is_refused(monkeypatch):
    from pyro_vae.distributed import init_from_env

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="use --device cpu"):
        init_from_env("cuda")
