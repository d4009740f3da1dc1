"""Clipped gradient sums without per-example gradients: book-keeping (Bu et al. 2023).

For a Linear or Conv2d layer with (unfolded) input activations a_i in R^{T x d} and output
gradients ("backprops") g_i in R^{T x p} of example i, the per-example weight gradient is
g_i^T a_i. Following Bu, Wang, Zha & Karypis 2023 ("Differentially Private Optimization on Large
Model at Small Cost", ICML, Algorithm 1, 'book-keeping'):

1. one forward pass stores a_i; one backward pass to the layer *outputs* (not the weights, so
   autograd skips every weight-gradient product) gives g_i;
2. each example's squared norm is ||g_i^T a_i||_F^2, computed either by the ghost norm trick
   <a_i a_i^T, g_i g_i^T> (Li et al. 2022, "Large Language Models Can Be Strong Differentially
   Private Learners", Sec. 4) when T^2 <= d p, or from the materialised g_i^T a_i otherwise
   (Bu et al.'s mixed ghost clipping rule);
3. the clipped sum is sum_i c_i g_i^T a_i = (c * g)^T a, one matrix product per layer, with the
   clip factors c_i = min(1, C / ||g_i||) of the *whole* gradient.

Only models whose parameters all sit in Linear or Conv2d layers (groups=1, zero padding), each
called once per forward pass, are handled; :func:`supports` says so and the trainer uses
:class:`~dp_core.trainer.clipping.FuncEngine` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dp_core.trainer.clipping import ClippedSum, clip_factors, count_correct
from dp_core.trainer.per_sample import LossFn

__all__ = ["BookkeepingEngine", "supports"]


def _layer_supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return (
            module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
    return False


def supports(model: nn.Module) -> bool:
    """Whether every trainable parameter belongs to a supported, untied Linear/Conv2d layer."""
    owners: dict[int, nn.Module] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in owners:
                return False  # tied weights: a per-layer decomposition would count them twice
            owners[id(p)] = module
    return all(_layer_supported(owners[id(p)]) for p in model.parameters() if p.requires_grad)


@dataclass
class _Record:
    module: nn.Module
    activation: Tensor
    output: Tensor


def _patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """Return the conv's input patches as [B, T, C_in * kh * kw] (the weight's flatten order)."""
    assert not isinstance(module.padding, str)  # refused by _layer_supported
    if module.dilation != (1, 1):
        cols = F.unfold(
            x,
            module.kernel_size,
            dilation=module.dilation,
            padding=module.padding,
            stride=module.stride,
        )
        return cols.transpose(1, 2)
    # Strided views and one copy: much faster on CPU than aten::im2col, same values.
    (ph, pw), (kh, kw), (sh, sw) = module.padding, module.kernel_size, module.stride
    padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    windows = padded.unfold(2, kh, sh).unfold(3, kw, sw)  # [B, C, H', W', kh, kw]
    batch, channels, h, w = windows.shape[:4]
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(batch, h * w, channels * kh * kw)


def _unfolded(record: _Record, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """Return (a, g) of shapes [B, T, d] and [B, p, T] for the layer of ``record``.

    g is kept in [B, p, T] (a conv's natural layout, a free view for Linear) so that the
    per-example gradient g_i a_i is one batched product with no transposing copy.
    """
    module, x = record.module, record.activation
    if isinstance(module, nn.Conv2d):
        return _patches(module, x), grad_out.flatten(start_dim=2)
    batch = x.shape[0]
    a = x.reshape(batch, -1, x.shape[-1])
    return a, grad_out.reshape(batch, -1, grad_out.shape[-1]).transpose(1, 2)


def _weight_and_bias(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    assert isinstance(module, nn.Linear | nn.Conv2d)
    return module.weight, module.bias


@dataclass
class _LayerGrads:
    """One layer's per-example squared norms and how to form its clipped sums."""

    sq_norms: Tensor
    weight_sum: Callable[[Tensor], Tensor] | None
    bias_per_example: Tensor | None


def _layer_grads(a: Tensor, g: Tensor, *, with_weight: bool, with_bias: bool) -> _LayerGrads:
    """Per-example squared norms of one layer, by the cheaper of ghost norm and materialisation."""
    batch, steps, d = a.shape
    p = g.shape[1]
    sq = a.new_zeros(batch)
    weight_sum: Callable[[Tensor], Tensor] | None = None
    if with_weight and steps * steps <= d * p:
        # Ghost norm: ||g_i a_i||_F^2 = sum_{t,s} (a_t . a_s)(g_t . g_s) (Li et al. 2022, Sec. 4).
        gram_g = torch.bmm(g.transpose(1, 2), g)
        sq = sq + (torch.bmm(a, a.transpose(1, 2)) * gram_g).sum(dim=(1, 2))

        def weight_sum(c: Tensor) -> Tensor:
            scaled = (g * c.reshape(-1, 1, 1)).permute(1, 0, 2).reshape(p, batch * steps)
            return scaled @ a.reshape(batch * steps, d)

    elif with_weight:
        per_example = torch.bmm(g, a)  # [B, p, d]: cheaper than ghost norms when T^2 > d p
        sq = sq + per_example.pow(2).sum(dim=(1, 2))

        def weight_sum(c: Tensor) -> Tensor:
            return (c @ per_example.reshape(batch, p * d)).reshape(p, d)

    bias = g.sum(dim=2) if with_bias else None
    if bias is not None:
        sq = sq + bias.pow(2).sum(dim=1)
    return _LayerGrads(sq, weight_sum, bias)


class BookkeepingEngine:
    """Clipped sums in one forward and one output-only backward pass (Bu et al. 2023)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        """Bind the engine to a model (see :func:`supports`) and a mean-reduced loss."""
        self.model = model
        self.loss_fn = loss_fn
        self._params = [p for p in model.parameters() if p.requires_grad]

    def _forward(self, inputs: Tensor) -> tuple[Tensor, list[_Record]]:
        records: list[_Record] = []

        def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            records.append(_Record(module, args[0].detach(), output))

        handles: list[RemovableHandle] = [
            m.register_forward_hook(hook)
            for m in self.model.modules()
            if _layer_supported(m) and any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        try:
            outputs = self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()
        if len({id(r.module) for r in records}) != len(records):
            raise ValueError("a layer ran twice in one forward pass; use engine='func'")
        return outputs, records

    def clipped_sum(self, inputs: Tensor, targets: Tensor, max_grad_norm: float) -> ClippedSum:
        """Return the clipped sum of the batch's per-example gradients."""
        outputs, records = self._forward(inputs)
        # loss_fn is a batch mean, so B * loss is the sum of per-example losses and its gradient
        # with respect to a layer output holds each example's own backprop.
        loss_sum = self.loss_fn(outputs, targets) * inputs.shape[0]
        grad_outs = torch.autograd.grad(loss_sum, [r.output for r in records])
        layers = []
        for record, grad_out in zip(records, grad_outs, strict=True):
            weight, bias = _weight_and_bias(record.module)
            a, g = _unfolded(record, grad_out)
            with_bias = bias is not None and bias.requires_grad
            layers.append(_layer_grads(a, g, with_weight=weight.requires_grad, with_bias=with_bias))
        norms = torch.stack([layer.sq_norms for layer in layers]).sum(dim=0).sqrt()
        factors = clip_factors(norms, max_grad_norm)
        summed: dict[int, Tensor] = {}
        for record, layer in zip(records, layers, strict=True):
            weight, bias = _weight_and_bias(record.module)
            if layer.weight_sum is not None:
                summed[id(weight)] = layer.weight_sum(factors).reshape(weight.shape)
            if bias is not None and layer.bias_per_example is not None:
                summed[id(bias)] = factors @ layer.bias_per_example
        grads = [summed.get(id(p), torch.zeros_like(p)) for p in self._params]
        return ClippedSum(grads, norms, float(loss_sum.detach()), count_correct(outputs, targets))
