"""The server's noise and the users' sampling are secret: the replay attack of issue 20 fails.

The adversary knows the public configuration (its --seed included) and sees every broadcast model.
Replaying a generator seeded from the configuration and subtracting the replayed noise from
m (w_r - w_{r-1}) recovered each round's noise-free sum of clipped updates to 1e-15 before
issue 20. With secret randomness (the default) the replay recovers nothing; with
``reproducible_noise`` it still succeeds, which shows the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip(
    "flwr", reason="Flower is the optional 'federated' extra (make test installs it)"
)

from dp_core.randomness import FEDERATED_STREAM, secure_normal, stream_generator  # noqa: E402
from dpledger.federated.apps import DpFedAvgStrategy, FederatedConfig  # noqa: E402
from dpledger.federated.runner import run_federated  # noqa: E402

SETTINGS = {"users": 12, "rounds": 3, "clients_per_round": 4, "noise_multiplier": 2.0,
            "clip": 1.0, "local_epochs": 1, "seed": 0}  # fmt: skip


APPLY = DpFedAvgStrategy._apply  # the real one (each run records through its own wrapper)


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _run(monkeypatch, config):
    """Run the job; return per round (broadcast before, true sum of clipped updates, after)."""
    rounds = []

    def recording(self, total):
        before = [c.copy() for c in self.current]
        APPLY(self, total)
        rounds.append((before, [t.copy() for t in total], [c.copy() for c in self.current]))

    monkeypatch.setattr(DpFedAvgStrategy, "_apply", recording)
    result, _ = run_federated(config, data="digits", engine="inprocess")
    assert result.rounds_completed == config.rounds
    return rounds, result


def _replay(config, rounds, rng, *, secure):
    """The attack: replay the sampling draw, then the noise, and subtract the noise."""
    sigma, m = config.noise_multiplier * config.clip, config.denominator
    errors = []
    for before, true_sum, after in rounds:
        rng.choice(config.users, size=config.clients_per_round, replace=False)
        noise = [
            sigma * (secure_normal(rng, a.shape) if secure else rng.normal(0.0, 1.0, a.shape))
            for a in after
        ]
        recovered = [m * (a - b) - n for a, b, n in zip(after, before, noise, strict=True)]
        errors.append(float(np.max(np.abs(_flat(recovered) - _flat(true_sum)))))
    return errors


def test_the_replay_attack_recovers_the_sum_only_with_reproducible_noise(monkeypatch):
    config = FederatedConfig(**SETTINGS, reproducible_noise=True)
    rounds, result = _run(monkeypatch, config)
    assert result.reproducible_noise
    errors = _replay(config, rounds, stream_generator(0, stream=FEDERATED_STREAM), secure=True)
    assert max(errors) < 1e-9  # the attack works against a public seed


def test_the_replay_attack_fails_against_secret_randomness(monkeypatch):
    config = FederatedConfig(**SETTINGS)
    rounds, result = _run(monkeypatch, config)
    assert not result.reproducible_noise
    sigma = config.noise_multiplier * config.clip
    # Every generator the public configuration suggests: the old default_rng(seed) path, and
    # the reproducible mode's derived stream, with and without secure mode.
    for rng_of in (lambda: np.random.default_rng(config.seed),
                   lambda: stream_generator(config.seed, stream=FEDERATED_STREAM)):  # fmt: skip
        for secure in (False, True):
            errors = _replay(config, rounds, rng_of(), secure=secure)
            # off by the whole noise: the max of d ~ 650 coordinates of N(0, 2 sigma^2)
            assert min(errors) > sigma


def test_same_settings_and_seed_twice_release_different_models(monkeypatch):
    config = FederatedConfig(**SETTINGS)
    first, _ = _run(monkeypatch, config)
    second, _ = _run(monkeypatch, config)
    assert np.array_equal(_flat(first[0][0]), _flat(second[0][0]))  # same public initial model
    assert float(np.max(np.abs(_flat(first[-1][2]) - _flat(second[-1][2])))) > 1e-3


def test_the_default_strategy_generator_is_secret():
    a = DpFedAvgStrategy(FederatedConfig(**SETTINGS), [np.zeros(3)])
    b = DpFedAvgStrategy(FederatedConfig(**SETTINGS), [np.zeros(3)])
    assert not np.array_equal(a.rng.random(4), b.rng.random(4))
