import math

import pytest
import torch

from dp_core.errors import InvalidParameterError
from dp_core.trainer.adaptive_clipping import (
    AdaptiveClipping,
    gradient_noise_multiplier,
    update_clip_norm,
)


def test_gradient_noise_composes_with_count_noise_to_the_accounted_sigma():
    sigma, sigma_b = 1.1, 5.0
    z_grad = gradient_noise_multiplier(noise_multiplier=sigma, count_noise_std=sigma_b)
    # Andrew et al. 2021, Thm. 1: z^-2 = z_grad^-2 + (2 sigma_b)^-2.
    assert (z_grad**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(sigma, rel=1e-12)
    assert z_grad > sigma


def test_count_noise_too_small_is_refused():
    with pytest.raises(InvalidParameterError, match="count_noise_std"):
        gradient_noise_multiplier(noise_multiplier=2.0, count_noise_std=1.0)


def _update(policy, unclipped, units=100, clip=1.0, noise_std=1e-9):
    settings = AdaptiveClipping(
        target_quantile=0.5, learning_rate=0.2, count_noise_std=noise_std, policy=policy
    )
    return update_clip_norm(
        clip=clip,
        unclipped=unclipped,
        units=units,
        expected_units=float(units),
        settings=settings,
        generator=torch.Generator().manual_seed(0),
    )


def test_geometric_update_follows_andrew_et_al():
    clip, fraction = _update("Geometric", unclipped=80)
    assert fraction == pytest.approx(0.8, abs=1e-6)
    assert clip == pytest.approx(math.exp(-0.2 * 0.3), rel=1e-6)
    assert _update("geometric", unclipped=20)[0] > 1.0


def test_linear_update_follows_mindarmour_and_stays_positive():
    clip, _ = _update("linear", unclipped=80)
    assert clip == pytest.approx(1.0 - 0.2 * 0.3, rel=1e-6)
    assert _update("linear", unclipped=100, clip=1e-4)[0] == pytest.approx(1e-3)


def test_bad_policy_is_refused():
    with pytest.raises(InvalidParameterError, match="policy"):
        AdaptiveClipping(policy="cubic")
