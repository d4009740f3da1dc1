"""Per-example gradients with ``torch.func`` (functional_call + vmap + grad).

DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy", Algorithm 1) needs the
gradient of each example's loss separately, so that each can be clipped before summation. For a
model whose forward pass treats examples independently, ``vmap(grad(loss_of_one_example))`` gives
exactly those gradients. Layers that mix examples within a batch (BatchNorm, and InstanceNorm with
running statistics) have no per-example gradient and are refused, as in Opacus.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from dp_core.trainer.errors import UnsupportedModelError

__all__ = [
    "LossFn",
    "PerSampleGradients",
    "check_model_supported",
    "per_sample_gradients",
    "trainable_parameters",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(output, target)``: the mean over the batch of per-example losses (PyTorch's default)."""


def check_model_supported(model: nn.Module) -> None:
    """Refuse models with layers that mix examples within a batch.

    Raises:
        UnsupportedModelError: naming the first offending layer and suggesting GroupNorm.
    """
    for name, module in model.named_modules():
        mixes = isinstance(module, _BatchNorm) or (
            isinstance(module, _InstanceNorm) and module.track_running_stats
        )
        if mixes:
            raise UnsupportedModelError(
                f"{type(module).__name__} at '{name or '<root>'}' mixes examples within a batch, so "
                "per-example gradients (and DP-SGD's guarantee) do not exist; replace it with "
                "nn.GroupNorm (e.g. nn.GroupNorm(min(32, C), C)) or nn.LayerNorm"
            )


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Return the parameters that require gradients, by name, in ``named_parameters`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class PerSampleGradients:
    """Per-example gradients of a batch of B examples.

    Attributes:
        grads: Parameter name -> tensor of shape ``[B, *param.shape]``.
        losses: Per-example losses, shape ``[B]``.
        outputs: The model's outputs, shape ``[B, ...]`` (detached).
    """

    grads: dict[str, Tensor]
    losses: Tensor
    outputs: Tensor


def per_sample_gradients(
    model: nn.Module, loss_fn: LossFn, inputs: Tensor, targets: Tensor
) -> PerSampleGradients:
    """Return each example's gradient of ``loss_fn(model(x_i), y_i)``.

    Each example is run as a batch of one inside ``vmap``, so ``loss_fn`` sees the shapes it sees
    in ordinary training. Dropout draws different masks per example (``randomness="different"``).

    Args:
        model: A model without cross-example layers (see :func:`check_model_supported`).
        loss_fn: Mean-reduced loss, e.g. ``torch.nn.functional.cross_entropy``.
        inputs: Batch of inputs, shape ``[B, ...]``.
        targets: Batch of targets, shape ``[B, ...]``.
    """
    params = {k: v.detach() for k, v in trainable_parameters(model).items()}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    buffers = dict(model.named_buffers())

    def loss_one(
        p: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out = functional_call(model, {**p, **frozen, **buffers}, (x.unsqueeze(0),))
        loss = loss_fn(out, y.unsqueeze(0))
        return loss, (loss.detach(), out.detach().squeeze(0))

    per_example = vmap(grad(loss_one, has_aux=True), in_dims=(None, 0, 0), randomness="different")
    grads, (losses, outputs) = per_example(params, inputs, targets)
    return PerSampleGradients(grads=grads, losses=losses, outputs=outputs)
