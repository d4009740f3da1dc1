import torch

from dp_core.trainer.noise import add_noise


def test_noise_has_zero_mean_and_the_requested_std():
    n, std = 200_000, 2.5
    gen = torch.Generator().manual_seed(0)
    (noisy,) = add_noise([torch.zeros(n, dtype=torch.float64)], std, gen)
    # Sample std has relative standard error 1/sqrt(2n) = 0.0016; the mean std / sqrt(n) = 0.0056.
    assert abs(float(noisy.std()) / std - 1) < 5 / (2 * n) ** 0.5
    assert abs(float(noisy.mean())) < 5 * std / n**0.5


def test_noise_is_added_to_each_tensor_and_reproducible():
    g = [torch.ones(3, 4), torch.ones(5)]
    a = add_noise(g, 1.0, torch.Generator().manual_seed(7))
    b = add_noise(g, 1.0, torch.Generator().manual_seed(7))
    assert [t.shape for t in a] == [(3, 4), (5,)]
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], g[0])
