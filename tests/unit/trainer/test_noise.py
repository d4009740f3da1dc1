import pytest
import torch

from dp_core.trainer.noise import SECURE_DRAWS, add_noise, standard_normal


@pytest.mark.parametrize("secure", [True, False])
def test_noise_has_zero_mean_and_the_requested_std(secure):
    n, std = 200_000, 2.5
    gen = torch.Generator().manual_seed(0)
    (noisy,) = add_noise([torch.zeros(n, dtype=torch.float64)], std, gen, secure=secure)
    # Sample std has relative standard error 1/sqrt(2n) = 0.0016; the mean std / sqrt(n) = 0.0056.
    assert abs(float(noisy.std()) / std - 1) < 5 / (2 * n) ** 0.5
    assert abs(float(noisy.mean())) < 5 * std / n**0.5


def test_secure_noise_is_gaussian_not_just_the_right_variance():
    # Kurtosis 3 and a Kolmogorov-Smirnov test against N(0, 1): a sum of 4 uniforms, say, would
    # have the variance right and fail both.
    from scipy import stats

    draws = standard_normal((100_000,), torch.Generator().manual_seed(3)).numpy()
    assert abs(stats.kurtosis(draws, fisher=False) - 3.0) < 0.1
    assert stats.kstest(draws, "norm").pvalue > 1e-4


def test_secure_mode_draws_four_normals_per_coordinate():
    a, b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    secure = standard_normal((7,), a)
    plain = sum(torch.randn(7, generator=b, dtype=torch.float64) for _ in range(SECURE_DRAWS))
    torch.testing.assert_close(secure, plain / 2, rtol=0, atol=1e-15)


def test_noise_is_added_to_each_tensor_and_reproducible_from_one_generator_state():
    g = [torch.ones(3, 4), torch.ones(5)]
    a = add_noise(g, 1.0, torch.Generator().manual_seed(7))
    b = add_noise(g, 1.0, torch.Generator().manual_seed(7))
    assert [t.shape for t in a] == [(3, 4), (5,)] and a[0].dtype == torch.float32
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], g[0])
