"""Measurement operators (lipdeploy.sensing) and latent fitting through a generator (lipdeploy.latent_fit)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lipdeploy.errors import InputError
from lipdeploy.latent_fit import LatentFitConfig, fit_latent, image_metrics, mom_loss
from lipdeploy.sensing import (
    OUTLIER_VALUE,
    GaussianOperator,
    MaskOperator,
    Measurements,
    OrthogonalOperator,
    back_projection,
    inverse_real_fft,
    least_squares,
    real_fft,
    simulate_measurements,
)


@pytest.fixture(autouse=True)
def one_thread():
    """These fits are tiny: on a shared 2-core machine torch's thread pool made them 20x slower (11.7 s vs 0.5 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class LinearGenerator(nn.Module):
    """A tiny generator: z [B, d] -> tanh(W z) viewed as [B, 3, 4, 4], on (-1, 1)."""

    def __init__(self, d: int = 6, seed: int = 0) -> None:
        super().__init__()
        self.latent_dim = d
        self.fc = nn.Linear(d, 48)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(48, d, generator=torch.Generator().manual_seed(seed)) * 0.4)
            self.fc.bias.zero_()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(z)).view(-1, 3, 4, 4)


@pytest.mark.parametrize("n", [12, 13, 48])
def test_real_fft_is_orthonormal_and_inverse_is_its_transpose(n):
    eye = torch.eye(n, dtype=torch.float64)
    q = real_fft(eye)  # row i = Q e_i, i.e. Q^T
    assert torch.allclose(q @ q.T, eye, atol=1e-12)
    assert torch.allclose(inverse_real_fft(eye), q.T, atol=1e-12)  # the inverse is the transpose
    x = torch.randn(3, n, dtype=torch.float64)
    assert torch.allclose(inverse_real_fft(real_fft(x)), x, atol=1e-12)


def test_orthogonal_operator_adjoint_rows_and_pseudo_inverse():
    n, m = 48, 17
    op = OrthogonalOperator(n, m, seed=3)
    x, y = torch.randn(4, n), torch.randn(4, m)
    lhs = (op.apply(x) * y).sum(dim=1)
    rhs = (x * op.adjoint(y)).sum(dim=1)
    assert torch.allclose(lhs, rhs, atol=1e-4)
    a = op.apply(torch.eye(n)).T  # the m x n matrix
    assert torch.allclose(a @ a.T, torch.eye(m) * n / m, atol=1e-4)  # orthogonal rows of norm sqrt(n / m)
    assert torch.allclose(op.apply(op.pseudo_inverse(op.apply(x))), op.apply(x), atol=1e-4)
    assert not torch.equal(OrthogonalOperator(n, m, seed=4).rows, op.rows)  # seeded


def test_gaussian_operator_rows_and_least_squares():
    op = GaussianOperator(40, 10, seed=1)
    assert op.matrix.shape == (10, 40)
    assert torch.equal(op.matrix, GaussianOperator(40, 10, seed=1).matrix)
    assert abs(float(op.matrix.square().sum(dim=1).mean()) - 4.0) < 1.0  # rows randn / sqrt(m): |row|^2 ~ n / m
    x = torch.randn(1, 40)
    xhat = op.pseudo_inverse(op.apply(x))
    assert torch.allclose(op.apply(xhat), op.apply(x), atol=1e-4)
    assert float(xhat.norm()) <= float(x.norm())  # minimum norm


def test_gaussian_operator_refused_beyond_memory_naming_its_bytes():
    with pytest.raises(InputError, match=r"100 x 1000 needs 400,000 bytes .*orthogonal"):
        GaussianOperator(1000, 100, max_bytes=399_999)
    GaussianOperator(1000, 100, max_bytes=400_000)


@pytest.mark.parametrize("m", [0, -3, 49])
def test_bad_measurement_counts_refused(m):
    for make in (lambda: GaussianOperator(48, m), lambda: OrthogonalOperator(48, m)):
        with pytest.raises(InputError, match="measurements"):
            make()


def test_outlier_rows_noise_and_nan_measurements():
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    op = GaussianOperator(48, 12, seed=0)
    meas = simulate_measurements(x, op, noise_sigma=0.0, outliers=3, seed=0)
    assert meas.m == 15 and torch.all(meas.y[12:] == OUTLIER_VALUE)
    pred = meas.predict(x.reshape(1, -1))
    assert torch.allclose(pred[0, 12:], x.sum().expand(3))
    assert torch.allclose(pred[0, :12], meas.y[:12], atol=1e-5)
    noisy = simulate_measurements(x, op, noise_sigma=0.01, seed=0)
    assert 0.001 < float((noisy.y - meas.y[:12]).std()) < 0.03
    with pytest.raises(InputError, match="NaN"):
        Measurements(op, torch.full((12,), math.nan))
    with pytest.raises(InputError, match="expected 12 measurements"):
        Measurements(op, torch.zeros(11))
    bp = back_projection(meas)  # the operator's rows only: the outliers are left out
    assert torch.allclose(bp, op.adjoint(meas.y[None, :12])[0])


def test_mom_loss_matches_a_direct_computation_with_the_given_permutation():
    gen = torch.Generator().manual_seed(0)
    rf, rg = torch.randn(2, 47, generator=gen), torch.randn(2, 47, generator=gen)
    perm = torch.randperm(47, generator=gen)
    got = mom_loss(rf, rg, 5, perm)
    d = (rf.numpy() ** 2 - rg.numpy() ** 2)[:, perm.numpy()]
    for b in range(2):
        means = sorted(float(np.mean(d[b, 5 * k : 5 * k + 5])) for k in range(9))  # 9 blocks, 2 rows left out
        assert got[b].item() == pytest.approx(means[4], rel=1e-6)
    means_even = sorted(float(np.mean(d[0, 4 * k : 4 * k + 4])) for k in range(11))[:10]  # 10 blocks: lower middle
    got_even = mom_loss(rf[:, perm[:40]], rg[:, perm[:40]], 4, torch.arange(40))
    assert got_even[0].item() == pytest.approx(means_even[4], rel=1e-6)


def _truth(seed: int = 5) -> tuple[LinearGenerator, torch.Tensor]:
    g = LinearGenerator()
    z = torch.randn(1, 6, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return g, g(z)


def test_fit_latent_recovers_a_generator_image_better_than_the_linear_baselines():
    g, x = _truth()
    meas = simulate_measurements(x, GaussianOperator(48, 12, seed=0), noise_sigma=0.01, seed=1)
    res = fit_latent(g, meas, LatentFitConfig(iters=300, lr=0.05, restarts=3), gt=x)
    base = image_metrics(least_squares(meas).view(1, 3, 4, 4), x)
    assert res.mse < 0.1 * base["mse"]
    assert res.psnr > base["psnr"] + 10
    assert len(res.restart_losses[0]) == 3 and res.measurement_loss == min(res.restart_losses[0])
    assert res.history[-1]["iter"] == 300 and res.output.shape == (1, 3, 4, 4)
    assert all(p.requires_grad for p in g.parameters()) and g.fc.weight.grad is None  # weights untouched


def test_an_interrupted_fit_gives_the_generator_back_as_it_was():
    g, x = _truth()
    g.train()
    g.fc.weight.requires_grad_(False)  # a caller's own frozen layer stays frozen, the others trainable
    meas = simulate_measurements(x, GaussianOperator(48, 12, seed=0), seed=1)

    def stop(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_latent(g, meas, LatentFitConfig(iters=10, objective="mom", mom_batch=4), callback=stop)
    assert g.training
    assert [p.requires_grad for p in g.parameters()] == [name != "fc.weight" for name, _ in g.named_parameters()]


def test_several_images_fit_in_one_batch_each_keeping_its_best_restart():
    g = LinearGenerator()
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        x = g(z)
    meas = simulate_measurements(x, GaussianOperator(48, 12, seed=0), noise_sigma=0.01, seed=1)
    assert meas.y.shape == (3, 12) and meas.images == 3
    assert torch.allclose(meas.y[1], simulate_measurements(x[1:2], meas.operator, seed=1).y, atol=0.05)
    res = fit_latent(g, meas, LatentFitConfig(iters=300, lr=0.05, restarts=2), gt=x)
    assert res.output.shape == (3, 3, 4, 4) and len(res.per_image) == 3 and len(res.restarts) == 3
    assert all(row["mse"] < 0.02 for row in res.per_image)
    assert res.mse == pytest.approx(sum(r["mse"] for r in res.per_image) / 3)
    assert back_projection(meas).shape == (3, 48) and least_squares(meas).shape == (3, 48)


def test_mom_resists_outliers_where_least_squares_fails():
    g, x = _truth()
    meas = simulate_measurements(x, OrthogonalOperator(48, 40, seed=0), noise_sigma=0.01, outliers=2, seed=1)
    cfg = dict(iters=300, lr=0.05, restarts=2)
    ls = fit_latent(g, meas, LatentFitConfig(objective="ls", **cfg), gt=x)
    mom = fit_latent(g, meas, LatentFitConfig(objective="mom", mom_batch=3, **cfg), gt=x)
    assert mom.mse < 0.5 * ls.mse


def test_inpainting_through_the_mask_operator():
    g, x = _truth(seed=2)
    mask = (torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.4).float().expand(1, 3, 4, 4)
    meas = simulate_measurements(x, MaskOperator(mask))
    assert torch.equal(meas.y, (x * mask).reshape(-1))
    res = fit_latent(g, meas, LatentFitConfig(iters=300, lr=0.05, restarts=2), gt=x)
    assert res.mse < 0.2 * float(x.square().mean())


def test_config_refuses_bad_values():
    with pytest.raises(InputError, match="objective"):
        LatentFitConfig(objective="l1")
    with pytest.raises(InputError, match="iters"):
        LatentFitConfig(iters=0)
    with pytest.raises(InputError, match="learning rate"):
        LatentFitConfig(lr=math.nan)
    assert "median" in LatentFitConfig.help("objective")
