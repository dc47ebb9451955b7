"""Semi-supervised M2: exact enumeration of the label and training on few labels."""

from __future__ import annotations

import json

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyro_vae import binarize
from pyro_vae.cli import main
from pyro_vae.models.semisupervised import (
    SemiSupervisedVAE,
    classification_accuracy,
    split_labelled,
)
from pyro_vae.runs import RunConfig, load_run
from pyro_vae.train.semisupervised import fit_semisupervised


def test_enumerated_loss_is_the_m2_unlabelled_bound():
    r"""TraceEnum's loss on unlabelled x equals, for the same draws of z,
    -sum_n [sum_y q(y|x) (log p(x, y, z_y) - log q(z_y | x, y)) + H(q(y|x))]."""
    torch.manual_seed(0)
    m2 = SemiSupervisedVAE.mlp(3, 2, (6,), (8,))
    x = torch.bernoulli(torch.full((5, 6), 0.4))
    pyro.set_rng_seed(4)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x)
    pyro.set_rng_seed(4)
    with torch.no_grad():
        q_y = m2.class_dist(x)
        labels = torch.arange(3).reshape(3, 1)
        q_z = m2.posterior.dist(x, labels)
        z = q_z.rsample()  # (3, 5, 2): the same draws as the enumerated guide's
        log_joint = (
            m2.prior.dist().log_prob(z)
            + dist.Categorical(logits=torch.zeros(3)).log_prob(labels)
            + m2.likelihood.dist(z, labels).log_prob(x)
        )
        bound_given_y = log_joint - q_z.log_prob(z)  # (3, 5)
        probs = q_y.probs.T  # (3, 5)
        unlabelled = (probs * bound_given_y).sum(0) + q_y.entropy()
    assert loss == pytest.approx(-unlabelled.sum().item(), rel=1e-5)


def test_m2_learns_from_few_labels(bundled):
    """20 labels per class plus 2,000 unlabelled images, one epoch: the classifier is
    far above chance (0.1) on held-out images."""
    x, y = bundled["train"].tensors
    xv, yv = bundled["valid"].tensors
    lab = torch.cat([(y[:2000] == c).nonzero().flatten()[:20] for c in range(10)])
    torch.manual_seed(0)
    m2 = SemiSupervisedVAE.mlp(10, 8, (1, 28, 28), (64,))
    xb = binarize(x[:2000], seed=0)
    xv = binarize(xv[:500], seed=1)
    before = classification_accuracy(m2, xv, yv[:500])
    history = fit_semisupervised(
        m2,
        (xb[lab], y[lab]),
        xb,
        epochs=1,
        batch_size=100,
        lr=2e-3,
        validation_data=(xv, yv[:500]),
    )
    assert len(history) == 1 and history.last["step"] == 20
    assert history.last["val_accuracy"] > 0.5, (before, history.last)
    assert before < 0.25


def test_m2_refuses_bad_labels():
    m2 = SemiSupervisedVAE.mlp(3, 2, (6,), (8,))
    x = torch.zeros(4, 6)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m2.model(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        fit_semisupervised(m2, (x, torch.tensor([0, 1, 5, 1])), x, epochs=1)
    with pytest.raises(ValueError, match="unlabelled is empty"):
        fit_semisupervised(m2, (x, torch.tensor([0, 1, 2, 1])), x[:0], epochs=1)
    generated = m2.model(None, torch.tensor([0, 2]))
    assert generated.shape == (2, 6)


def test_split_labelled_is_balanced_disjoint_and_seeded():
    pyro.set_rng_seed(0)
    y = torch.randint(0, 4, (200,))
    x = torch.arange(200).float().unsqueeze(1)  # x records the index of each example
    (xl, yl), xu = split_labelled(x, y, 20, 4, seed=3)
    assert torch.bincount(yl, minlength=4).tolist() == [5, 5, 5, 5]
    idx_l, idx_u = xl.flatten().long(), xu.flatten().long()
    assert torch.equal(y[idx_l], yl)
    assert set(idx_l.tolist()).isdisjoint(idx_u.tolist())
    assert len(idx_l) + len(idx_u) == 200
    (xl2, _), _ = split_labelled(x, y, 20, 4, seed=3)
    (xl3, _), _ = split_labelled(x, y, 20, 4, seed=4)
    assert torch.equal(xl, xl2) and not torch.equal(xl, xl3)
    with pytest.raises(ValueError, match="multiple of num_classes=4"):
        split_labelled(x, y, 22, 4)
    with pytest.raises(ValueError, match="use fewer labels"):
        split_labelled(x, y, 400, 4)


def test_cli_semisupervised_trains_saves_and_reloads(tmp_path, capsys):
    out = tmp_path / "m2"
    argv = ["semisupervised", "--labels", "100", "--epochs", "1", "--hidden-dims", "32"]
    assert main([*argv, "--latent-dim", "4", "--out", str(out), "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "test.json").read_text())
    assert metrics["labels"] == 100 and metrics["epochs"] == 1 and metrics["num_test"] == 1000
    assert metrics["test_accuracy"] > 0.5  # chance is 0.1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    # the saved weights reproduce the reported accuracy on the same binarized test set
    run = load_run(out)
    x_test, y_test = run.split("test").tensors
    assert classification_accuracy(run.module, x_test, y_test) == metrics["test_accuracy"]
    assert [r["epoch"] for r in run.history] == [1] and "val_accuracy" in run.history[0]
    # the run resumes exactly like a train run
    assert main(["semisupervised", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in load_run(out).history] == [1, 2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "105"], "multiple of num_classes=10"),
        (["--labels", "0"], "--labels must be an integer >= 1"),
        (["--labels", "9000"], "use fewer labels"),
        (["--epochs", "-1"], "--epochs must be an integer >= 0"),
        (["--time-budget", "-1"], "--time-budget must be a number > 0"),
        (["--dataset", "mnist"], "needs --data-dir"),
    ],
)
def test_cli_semisupervised_bad_input_exits_2(tmp_path, capsys, args, message):
    out = tmp_path / "m2"
    assert main(["semisupervised", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # a refused command writes nothing


def test_cli_semisupervised_ctrl_c_keeps_the_last_epoch(tmp_path, interrupt_after_first_epoch):
    out = tmp_path / "m2"
    args = ["semisupervised", "--epochs", "200", "--hidden-dims", "16", "--latent-dim", "4"]
    code, text = interrupt_after_first_epoch(
        [*args, "--no-progress", "--out", str(out)], out / "metrics.jsonl"
    )
    assert code == 130, text
    assert "Traceback" not in text and f"--resume {out}" in text
    assert isinstance(load_run(out).module, SemiSupervisedVAE)  # a finished epoch loads


def _interleaved(n_u: int, n_l: int, batch_size: int, seed: int = 0):
    from pyro_vae.train.batches import SemiSupervisedBatches, SemiSupervisedData

    x_u = torch.arange(n_u, dtype=torch.float32)[:, None]  # each example holds its index
    x_l = 1000 + torch.arange(n_l, dtype=torch.float32)[:, None]
    y_l = torch.arange(n_l) % 10
    batches = SemiSupervisedBatches(
        SemiSupervisedData((x_l, y_l), x_u, schedule="interleaved"), batch_size
    )
    torch.manual_seed(seed)
    batches.generator.manual_seed(seed)
    return batches


def _kinds(steps):
    return ["L" if "x_labelled" in kw else "U" for _, kw in steps]


@pytest.mark.parametrize(
    ("n_u", "n_l", "batch_size", "kinds"),
    [
        (450, 50, 100, "ULUUUU"),  # period 10: one labelled step, at step 1
        (450, 250, 100, "ULULULUU"),  # period 2: labelled at steps 1, 3, 5
        (100, 400, 100, "LLLLU"),  # period 1: the labelled batches first
        (95, 5, 10, "ULUUUUUUUUU"),  # period 20 is longer than the epoch
    ],
)
def test_interleaved_schedule_sees_every_example_once_per_epoch(n_u, n_l, batch_size, kinds):
    """Pyro's SS-VAE schedule: a labelled step when i mod floor(N / N_l) == 1, until the
    epoch's labelled batches are used; a labelled step has no unlabelled examples."""
    batches = _interleaved(n_u, n_l, batch_size)
    for epoch in range(2):
        batches.start_epoch(epoch)
        steps = list(batches)
        assert "".join(_kinds(steps)) == kinds and len(batches) == len(kinds)
        assert batches.exhausted and batches.batches_done == len(kinds)
        seen_u = torch.cat([x for x, kw in steps if "x_labelled" not in kw]).flatten()
        seen_l = torch.cat([kw["x_labelled"] for _, kw in steps if "x_labelled" in kw])
        assert sorted(seen_u.tolist()) == list(range(n_u))
        assert sorted(seen_l.flatten().tolist()) == [1000 + i for i in range(n_l)]
        assert all(x.shape[0] == 0 for x, kw in steps if "x_labelled" in kw)
        labels = torch.cat([kw["y_labelled"] for _, kw in steps if "x_labelled" in kw])
        assert torch.equal(labels, (seen_l.flatten() - 1000).long() % 10)  # pairs kept


def test_interleaved_schedule_resumes_mid_epoch_exactly():
    whole = _interleaved(450, 250, 100)
    whole.start_epoch(0)
    expected = list(whole)
    part = _interleaved(450, 250, 100)
    part.start_epoch(0)
    iterator = iter(part)
    first = [next(iterator) for _ in range(4)]
    state = part.state_dict()
    resumed = _interleaved(450, 250, 100, seed=1)  # another generator: the state decides
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(first) + len(rest) == len(expected)
    for (xa, ka), (xb, kb) in zip(first + rest, expected, strict=True):
        assert torch.equal(xa, xb) and ka.keys() == kb.keys()
        assert all(torch.equal(ka[k], kb[k]) for k in ka)


def test_a_labelled_step_scores_the_labelled_batch_alone():
    from pyro_vae.objectives.semisupervised import SemiSupervisedELBO

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae = SemiSupervisedVAE.mlp(3, 2, (6,), (8,))
    x = torch.bernoulli(torch.full((6, 6), 0.4))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    elbo = SemiSupervisedELBO(aux_weight=5.0)
    pyro.set_rng_seed(1)
    alone = elbo.differentiable_loss(vae.model, vae.guide, x_labelled=x, y_labelled=y)
    pyro.set_rng_seed(1)
    empty = elbo.differentiable_loss(vae.model, vae.guide, x[:0], x_labelled=x, y_labelled=y)
    assert torch.equal(alone, empty)
    with pytest.raises(ValueError, match="Pass unlabelled x"):
        elbo.differentiable_loss(vae.model, vae.guide, x[:0])


def test_cli_pyro_recipe_options_train_and_are_kept(tmp_path, capsys):
    out = tmp_path / "m2"
    argv = ["semisupervised", "--labels", "100", "--epochs", "1", "--hidden-dims", "32"]
    argv += ["--latent-dim", "4", "--labelled-schedule", "interleaved", "--adam-beta1", "0.95"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["labelled_schedule"] == "interleaved" and config["adam_beta1"] == 0.95
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    groups = state["optimizer"]["param_groups"]
    assert all(g["betas"][0] == 0.95 for g in groups)
    metrics = json.loads((out / "test.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1  # one labelled step per epoch: no skill yet
    assert main(["semisupervised", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["adam_beta1"] == 0.95
    for flag, value in (("--adam-beta1", "0.5"), ("--labelled-schedule", "paired")):
        resume = ["semisupervised", "--resume", str(out), flag, value, "--epochs", "3"]
        assert main(resume) == 2
        assert f"{flag} {value} cannot change when a run resumes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="semi-supervised model only"):
        RunConfig(labelled_schedule="interleaved").validate()  # train has no such flag
    with pytest.raises(ValueError, match="is not one of paired, interleaved"):
        RunConfig(model="m2", labels=100, labelled_schedule="pyro").validate()
    assert main([*argv[:-4], "--adam-beta1", "1.0", "--out", str(tmp_path / "b")]) == 2
    assert "--adam-beta1 must be in [0, 1)" in capsys.readouterr().err


def test_fit_takes_the_interleaved_steps_in_order():
    from pyro_vae import fit
    from pyro_vae.objectives.semisupervised import SemiSupervisedELBO
    from pyro_vae.train.batches import SemiSupervisedData

    seen = []

    class Spy(SemiSupervisedELBO):
        def differentiable_loss(self, model, guide, x=None, **kwargs):
            seen.append(("L" if kwargs else "U", 0 if x is None else x.shape[0]))
            return super().differentiable_loss(model, guide, x, **kwargs)

    pyro.clear_param_store()
    torch.manual_seed(0)
    m2 = SemiSupervisedVAE.mlp(3, 2, (6,), (8,))
    x = torch.bernoulli(torch.full((90, 6), 0.4))
    y = torch.arange(30) % 3
    data = SemiSupervisedData((x[:30], y), x[30:], schedule="interleaved")
    history = fit(
        m2.model,
        m2.guide,
        data,
        objective=Spy(1.0),
        epochs=1,
        batch_size=20,
        capture=False,
        progress=False,
    )
    # 60 unlabelled in 3 batches, 30 labelled in 2 (20 + 10), period floor(90 / 30) = 3
    assert [kind for kind, _ in seen[-5:]] == ["U", "L", "U", "U", "L"]
    assert [n for _, n in seen[-5:]] == [20, 0, 20, 20, 0]
    assert len(history.records) == 1 and torch.isfinite(
        torch.tensor(history.records[0]["train_elbo"])
    )


def test_loss_without_gradients_equals_the_differentiable_loss():
    """``loss`` (used for evaluation, e.g. under ``torch.no_grad``) gives the value of
    ``differentiable_loss`` for the same random draws; TraceEnum_ELBO's own
    ``differentiable_loss`` refuses to run without gradients."""
    from pyro_vae.objectives.semisupervised import SemiSupervisedELBO

    pyro.clear_param_store()
    torch.manual_seed(0)
    m2 = SemiSupervisedVAE.mlp(3, 2, (6,), (8,))
    x = torch.bernoulli(torch.full((6, 6), 0.4))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    elbo = SemiSupervisedELBO(aux_weight=2.0)
    both = {"x_labelled": x[:3], "y_labelled": y[:3]}
    only = {"x_labelled": x, "y_labelled": y}
    for args, labelled in [((x,), both), ((x,), {}), ((x[:0],), only), ((), only)]:
        pyro.set_rng_seed(3)
        expected = elbo.differentiable_loss(m2.model, m2.guide, *args, **labelled).item()
        pyro.set_rng_seed(3)
        with torch.no_grad():
            value = elbo.loss(m2.model, m2.guide, *args, **labelled)
        assert value == pytest.approx(expected, rel=1e-6)
