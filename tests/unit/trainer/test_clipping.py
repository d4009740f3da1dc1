import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dp_core.trainer.bookkeeping import BookkeepingEngine, supports
from dp_core.trainer.clipping import FuncEngine, MicrobatchAccumulator, clip_factors


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(4, 6, 2, stride=1, dilation=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
        nn.ReLU(),
        nn.Linear(5, 3, bias=False),
    ).double()


@pytest.mark.parametrize("max_grad_norm", [1e-3, 0.1, 1e3])
def test_clipped_norms_at_most_c(max_grad_norm):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4) * 5, torch.randint(0, 3, (16,))
    grads, _, _ = FuncEngine(model, F.cross_entropy).per_sample(x, y)
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    clipped = [
        g * clip_factors(norms, max_grad_norm).reshape(-1, *[1] * (g.ndim - 1)) for g in grads
    ]
    clipped_norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in clipped]).sum(0).sqrt()
    assert torch.all(clipped_norms <= max_grad_norm * (1 + 1e-6))
    unclipped = norms < max_grad_norm
    torch.testing.assert_close(clipped_norms[unclipped], norms[unclipped], rtol=1e-5, atol=1e-7)


def test_func_engine_clipped_sum_matches_manual():
    model = nn.Sequential(nn.Linear(4, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    result = FuncEngine(model, F.cross_entropy).clipped_sum(x, y, 0.3)
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(8):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        factor = min(1.0, 0.3 / (float(norm) + 1e-6))
        for e, p in zip(expected, model.parameters(), strict=True):
            e += factor * p.grad
    for got, want in zip(result.grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("max_grad_norm", [0.05, 100.0])
def test_bookkeeping_equals_materialised_per_sample_clipping(max_grad_norm):
    model = _cnn()
    assert supports(model)
    x, y = torch.randn(7, 1, 10, 10, dtype=torch.float64), torch.randint(0, 3, (7,))
    fast = BookkeepingEngine(model, F.cross_entropy).clipped_sum(x, y, max_grad_norm)
    slow = FuncEngine(model, F.cross_entropy).clipped_sum(x, y, max_grad_norm)
    torch.testing.assert_close(fast.norms, slow.norms, atol=1e-9, rtol=1e-9)
    for a, b in zip(fast.grads, slow.grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
    assert fast.loss_sum == pytest.approx(slow.loss_sum)
    assert fast.correct == slow.correct


def test_bookkeeping_handles_sequence_linear_and_frozen_layers():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(20, 2)).double()
    model[0].bias.requires_grad_(False)
    x, y = torch.randn(6, 5, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    fast = BookkeepingEngine(model, F.cross_entropy).clipped_sum(x, y, 0.5)
    slow = FuncEngine(model, F.cross_entropy).clipped_sum(x, y, 0.5)
    assert len(fast.grads) == 3
    for a, b in zip(fast.grads, slow.grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_bookkeeping_support_rules():
    assert not supports(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    assert not supports(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    assert not supports(tied)
    frozen_norm = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    frozen_norm[1].requires_grad_(False)
    assert supports(frozen_norm)


def test_microbatches_clip_each_microbatch_mean():
    model = nn.Sequential(nn.Linear(4, 3)).double()
    engine = FuncEngine(model, F.cross_entropy)
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    assignment = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1])
    acc = MicrobatchAccumulator(engine, 4)  # microbatch 3 stays empty
    acc.add(x[:5], y[:5], assignment[:5])
    acc.add(x[5:], y[5:], assignment[5:])
    summed, norms, nonempty = acc.clipped_sum(0.2)
    assert nonempty.tolist() == [True, True, True, False]
    expected = [torch.zeros_like(p) for p in model.parameters()]
    for j in range(3):
        members = assignment == j
        model.zero_grad()
        F.cross_entropy(model(x[members]), y[members]).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert float(norm) == pytest.approx(float(norms[j]))
        for e, p in zip(expected, model.parameters(), strict=True):
            e += min(1.0, 0.2 / (float(norm) + 1e-6)) * p.grad
    for got, want in zip(summed, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
