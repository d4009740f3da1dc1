import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dp_core.errors import DpCoreError
from dp_core.trainer.errors import UnsupportedModelError
from dp_core.trainer.per_sample import check_model_supported, per_sample_gradients

torch.set_default_dtype(torch.float32)


class EmbeddingModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.norm(self.emb(x)).mean(dim=1))


def _models():
    return {
        "linear": (nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), torch.randn(6, 5)),
        "conv2d": (
            nn.Sequential(
                nn.Conv2d(2, 4, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(4 * 3 * 3, 3),
            ),
            torch.randn(6, 2, 6, 6),
        ),
        "embedding_layernorm": (EmbeddingModel(), torch.randint(0, 11, (6, 5))),
        "groupnorm": (
            nn.Sequential(
                nn.Conv2d(2, 4, 3),
                nn.GroupNorm(2, 4),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(4 * 2 * 2, 3),
            ),
            torch.randn(6, 2, 4, 4),
        ),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_per_sample_gradients_equal_single_example_autograd(name):
    model, x = _models()[name]
    model = model.double()
    if x.is_floating_point():
        x = x.double()
    y = torch.randint(0, 3, (x.shape[0],))
    result = per_sample_gradients(model, F.cross_entropy, x, y)
    for i in range(x.shape[0]):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for pname, p in model.named_parameters():
            torch.testing.assert_close(result.grads[pname][i], p.grad, atol=1e-6, rtol=0)
    assert result.losses.shape == (x.shape[0],)
    assert result.outputs.shape == (x.shape[0], 3)


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    result = per_sample_gradients(
        model, F.cross_entropy, torch.randn(5, 3), torch.randint(0, 2, (5,))
    )
    assert set(result.grads) == {"0.bias", "1.weight", "1.bias"}


@pytest.mark.parametrize(
    "layer",
    [nn.BatchNorm1d(4), nn.SyncBatchNorm(4), nn.InstanceNorm1d(4, track_running_stats=True)],
)
def test_cross_example_layers_are_refused_with_groupnorm_hint(layer):
    model = nn.Sequential(nn.Linear(3, 4), layer)
    with pytest.raises(UnsupportedModelError, match="GroupNorm") as info:
        check_model_supported(model)
    assert "'1'" in str(info.value)
    assert isinstance(info.value, DpCoreError)
    assert info.value.code == "unsupported_model"


def test_per_example_layers_are_accepted():
    check_model_supported(
        nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.LayerNorm(4), nn.InstanceNorm1d(4))
    )
