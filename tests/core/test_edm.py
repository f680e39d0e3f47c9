"""EDM math: the official schedule, preconditioning identities, and solver accuracy on a
Gaussian data distribution whose exact denoiser and exact ODE solution are known."""

from __future__ import annotations

import math

import pytest
import torch

from ouroboros_core.edm import (
    euler_step,
    heun_step,
    initial_noise_scale,
    karras_sigmas,
    loss_weight,
    preconditioning,
    sample_training_sigmas,
)

# The official 25-step list as printed in reference/official-ouroboros3d.md section 1.5
# (rounded there to 2-5 significant digits, so compared digit by digit)
OFFICIAL_SIGMAS = (
    "700 545.73 421.57 322.45 244.02 182.55 134.85 98.27 70.54 49.81 34.54 23.47 15.59 10.10 "
    "6.354 3.870 2.269 1.273 0.678 0.339 0.157 0.0664 0.0248 0.0079 0.002"
).split()


def significant_digits(text: str) -> int:
    return len(text.replace(".", "").lstrip("0"))


def test_karras_schedule_reproduces_official_25_steps():
    sigmas = karras_sigmas(25, 0.002, 700.0, 7.0, dtype=torch.float64)
    assert sigmas.shape == (26,)
    assert sigmas[-1] == 0
    for ours, ref in zip(sigmas[:-1].tolist(), OFFICIAL_SIGMAS):
        assert float(f"{ours:.{significant_digits(ref)}g}") == float(ref)
    # t = 0.25 ln sigma: the official first/last timesteps
    t = preconditioning(sigmas[:-1]).c_noise
    assert t[0].item() == pytest.approx(1.638, abs=1e-3)
    assert t[-1].item() == pytest.approx(-1.554, abs=1e-3)


def test_karras_schedule_matches_diffusers_svd_scheduler():
    """An independent implementation: diffusers' Euler scheduler with SVD's scheduler config."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(
        prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
        timestep_type="continuous", timestep_spacing="leading", steps_offset=1,
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
    )
    sched.set_timesteps(25)
    ours = karras_sigmas(25, 0.002, 700.0, 7.0, dtype=torch.float64)
    assert torch.allclose(ours, sched.sigmas.double(), rtol=1e-3, atol=0)
    assert float(sched.init_noise_sigma) == pytest.approx(initial_noise_scale(700.0, 1.0, "diffusers"), rel=1e-6)


def test_karras_single_step_and_monotone():
    assert karras_sigmas(1, 0.002, 80.0).tolist() == [80.0, 0.0]
    s = karras_sigmas(10, 0.002, 80.0)
    assert (s[:-1] > s[1:]).all()


def test_v_preconditioning_matches_diffusers_euler_formulas():
    """SVD's scheduler: scale_model_input divides by sqrt(sigma^2+1); x0 = out (-sigma/sqrt(sigma^2+1)) + x/(sigma^2+1)."""
    sigma = torch.tensor([0.002, 0.5, 1.0, 30.0, 700.0], dtype=torch.float64)
    p = preconditioning(sigma, sigma_data=1.0, parameterization="v")
    assert torch.allclose(p.c_in, 1 / torch.sqrt(sigma**2 + 1))
    assert torch.allclose(p.c_out, -sigma / torch.sqrt(sigma**2 + 1))
    assert torch.allclose(p.c_skip, 1 / (sigma**2 + 1))
    assert torch.allclose(p.c_noise, 0.25 * torch.log(sigma))
    e = preconditioning(sigma, sigma_data=1.0, parameterization="edm")
    assert torch.allclose(e.c_out, -p.c_out)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 2.0])
def test_preconditioning_identities_general_sigma_data(sigma_data):
    """For data x0 ~ N(0, sigma_data^2): the network input and the ideal network target have unit
    variance, the ideal output recovers x0, and lambda * c_out^2 = 1 (EDM's design rules)."""
    g = torch.Generator().manual_seed(0)
    n = 50_000
    for sigma in (0.01, 0.3, 1.0, 5.0, 80.0):
        x0 = sigma_data * torch.randn(n, generator=g, dtype=torch.float64)
        x = x0 + sigma * torch.randn(n, generator=g, dtype=torch.float64)
        for param in ("edm", "v"):
            p = preconditioning(torch.tensor(sigma, dtype=torch.float64), sigma_data, param)
            target = (x0 - p.c_skip * x) / p.c_out  # the ideal F
            assert torch.allclose(p.c_skip * x + p.c_out * target, x0)
            # relative standard error of a std estimate: 1/sqrt(2n) = 0.32 %; 5 SE bounds
            assert (p.c_in * x).std().item() == pytest.approx(1.0, rel=0.016)
            assert target.std().item() == pytest.approx(1.0, rel=0.016)
            assert (loss_weight(torch.tensor(sigma, dtype=torch.float64), sigma_data) * p.c_out**2).item() == pytest.approx(1.0)


def test_training_sigmas_are_lognormal_and_seeded():
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    a = sample_training_sigmas(50_000, 1.0, 1.6, g1)
    b = sample_training_sigmas(50_000, 1.0, 1.6, g2)
    assert torch.equal(a, b)
    logs = a.log()
    # standard errors: 1.6/sqrt(n) = 0.007 for the mean, 1.6/sqrt(2n) = 0.005 for the std
    assert logs.mean().item() == pytest.approx(1.0, abs=0.035)
    assert logs.std().item() == pytest.approx(1.6, abs=0.025)


def test_initial_noise_scale():
    assert initial_noise_scale(700.0, 1.0, "diffusers") == pytest.approx(700.0007142853)
    assert initial_noise_scale(700.0, 1.0, "edm") == 700.0


MU, S = 0.3, 0.5  # the data distribution N(MU, S^2)
SIGMA_MAX = 80.0


def gaussian_denoiser(x: torch.Tensor, sigma) -> torch.Tensor:
    """The exact E[x0 | x] for x0 ~ N(MU, S^2), x = x0 + sigma eps."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype)
    return MU + S**2 / (S**2 + sigma**2) * (x - MU)


def run_solver(solver: str, steps: int, x_T: torch.Tensor) -> torch.Tensor:
    sigmas = karras_sigmas(steps, 0.002, SIGMA_MAX, dtype=torch.float64)
    x = x_T.clone()
    for i in range(steps):
        x0 = gaussian_denoiser(x, sigmas[i])
        if solver == "euler":
            x = euler_step(x, x0, sigmas[i], sigmas[i + 1])
        else:
            x = heun_step(x, x0, sigmas[i], sigmas[i + 1], gaussian_denoiser)
    return x


def exact_ode_solution(x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE maps x - MU linearly: (x - MU) sqrt(S^2 + sigma^2) is constant."""
    return MU + (x_T - MU) * S / math.sqrt(S**2 + SIGMA_MAX**2)


@pytest.mark.parametrize("solver,steps", [("euler", 400), ("heun", 100)])
def test_sampling_gaussian_data_matches_distribution(solver, steps):
    n = 100_000
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, generator=g, dtype=torch.float64) * initial_noise_scale(SIGMA_MAX, S, "diffusers")
    x = run_solver(solver, steps, x_T)
    # sampling standard errors: S/sqrt(n) = 0.0016 (mean), 1/sqrt(2n) = 0.22 % (relative std).
    # x_T has mean 0 rather than MU, which shifts the result by MU * S / SIGMA_MAX = 0.0019;
    # the solvers' discretisation error is below 1 % of the std at these step counts (checked
    # against the exact solution in the next test).
    assert x.mean().item() == pytest.approx(MU, abs=5 * S / math.sqrt(n) + MU * S / SIGMA_MAX)
    assert x.std().item() == pytest.approx(S, rel=5 / math.sqrt(2 * n) + 0.01)


def test_solver_convergence_orders():
    """Euler is first order (error halves when steps double), Heun second order (quarters)."""
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(1000, generator=g, dtype=torch.float64) * initial_noise_scale(SIGMA_MAX, S)
    exact = exact_ode_solution(x_T)
    err = {(s, n): (run_solver(s, n, x_T) - exact).abs().max().item() for s in ("euler", "heun") for n in (50, 100)}
    assert err["euler", 50] / err["euler", 100] == pytest.approx(2.0, rel=0.15)
    assert err["heun", 50] / err["heun", 100] == pytest.approx(4.0, rel=0.15)
    assert err["heun", 100] < err["euler", 100] / 10


def test_steps_end_on_x0_and_broadcast_per_sample():
    x = torch.randn(2, 3, 4)
    x0 = torch.randn(2, 3, 4)
    assert torch.equal(euler_step(x, x0, torch.tensor([2.0, 5.0]), torch.zeros(2)), x0)
    calls = []
    out = heun_step(x, x0, 2.0, 0.0, lambda *a: calls.append(a) or x0)
    assert calls == [] and torch.equal(out, x0)
    # per-sample sigmas equal the scalar computation of each sample
    y = euler_step(x, x0, torch.tensor([2.0, 5.0]), torch.tensor([1.0, 4.0]))
    assert torch.allclose(y[1], euler_step(x[1:], x0[1:], 5.0, 4.0)[0])
