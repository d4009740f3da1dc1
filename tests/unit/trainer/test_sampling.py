import pytest
import torch

from dp_core.errors import InvalidParameterError
from dp_core.trainer.sampling import (
    bernoulli_mask,
    poisson_batch,
    rate_down,
    split_physical,
    steps_per_epoch,
)


def test_poisson_batch_sizes_have_binomial_mean_and_variance():
    n, q, draws = 1000, 0.05, 3000
    gen = torch.Generator().manual_seed(1)
    sizes = torch.tensor(
        [poisson_batch(n, q, gen).numel() for _ in range(draws)], dtype=torch.float64
    )
    mean, var = n * q, n * q * (1 - q)
    # Standard errors: sqrt(var / draws) = 0.13 for the mean, sqrt(2 var^2 / draws) = 1.2 for the variance.
    assert abs(float(sizes.mean()) - mean) < 5 * (var / draws) ** 0.5
    assert abs(float(sizes.var()) - var) < 5 * (2 * var**2 / draws) ** 0.5


def test_each_example_is_included_independently_with_rate_q():
    n, q, draws = 50, 0.2, 4000
    gen = torch.Generator().manual_seed(2)
    counts = torch.zeros(n)
    for _ in range(draws):
        counts[poisson_batch(n, q, gen)] += 1
    se = (q * (1 - q) / draws) ** 0.5
    assert torch.all((counts / draws - q).abs() < 5 * se)


def test_empty_batches_happen_and_split_to_nothing():
    gen = torch.Generator().manual_seed(3)
    batches = [poisson_batch(10, 0.01, gen) for _ in range(50)]
    assert any(b.numel() == 0 for b in batches)
    assert split_physical(torch.tensor([], dtype=torch.long), 4) == []


def test_physical_split_caps_size_and_keeps_every_index():
    idx = torch.arange(10)
    chunks = split_physical(idx, 4)
    assert [c.numel() for c in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat(chunks), idx)
    assert len(split_physical(idx, None)) == 1


def test_steps_per_epoch_is_ceil_one_over_q():
    assert steps_per_epoch(0.25) == 4
    assert steps_per_epoch(256 / 1437) == 6
    assert steps_per_epoch(1.0) == 1


# --- inclusion never above the accounted rate -----------------------------------------------------


def test_float64_uniforms_lie_on_the_2_to_the_minus_53_grid():
    """The proof that P(include) = rate_down(q) <= q rests on this property of torch.rand."""
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scaled = u * 2.0**53
    assert bool((scaled == scaled.floor()).all()) and float(u.min()) >= 0.0 and float(u.max()) < 1


def test_the_mask_compares_the_same_uniforms_with_the_rate_rounded_down():
    q = 0.1 + 2.0**-40  # not a float32: a float32 comparison would include with up to 6e-8 more
    mask = bernoulli_mask(q, 50_000, torch.Generator().manual_seed(7))
    u = torch.rand(50_000, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(mask, u < rate_down(q))
    rates = torch.full((50_000,), q, dtype=torch.float64)
    assert torch.equal(bernoulli_mask(rates, 50_000, torch.Generator().manual_seed(7)), mask)


def test_edge_rates_one_and_below_the_grid():
    g = torch.Generator().manual_seed(0)
    assert bool(bernoulli_mask(1.0, 1000, g).all())
    assert not bool(bernoulli_mask(1e-20, 100_000, g).any())  # rounds down to 0: never above q


def test_a_non_cpu_generator_is_refused():
    class _Meta:
        device = torch.device("meta")

    with pytest.raises(InvalidParameterError):
        bernoulli_mask(0.5, 10, _Meta())  # type: ignore[arg-type]
