"""Fixed ScatterNet features for DP-SGD (Tramer & Boneh 2021).

Tramer & Boneh, "Differentially Private Learning Needs Better Features (or Much More Data)",
ICLR 2021, Sec. 3.

A scattering network (Oyallon & Mallat 2015; Bruna & Mallat 2013) is a fixed cascade of Morlet
wavelet convolutions and modulus non-linearities: with J=2 and L=8 orientations it maps each
H x W image channel to 81 channels at (H/4) x (W/4) (1x28x28 -> 81x7x7, 3x32x32 -> 243x8x8).
Nothing in it is learned or fitted: it is the same function for every data set, so computing it
on the private data costs no privacy. Only the head trained on top (a linear layer or a small
CNN, with per-example clipping and noise) touches the data through DP-SGD.

The features are computed once per run (kymatio's torch frontend, in chunks, without autograd),
optionally cached on disk under ``$DPLEDGER_FEATURE_CACHE`` keyed by a sha256 of the images and
the transform's settings. The cache holds a function of the private data: keep it where the data
is kept.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from dp_core.trainer.data import TrainTestData

__all__ = [
    "SCATTERING_CHANNELS",
    "SCATTERNET_MODELS",
    "features_for_model",
    "scattering_features",
]

SCATTERNET_MODELS = ("scatternet-linear", "scatternet-cnn")
SCATTERING_CHANNELS = 81  # 1 + J L + L^2 J (J - 1) / 2 channels for J=2, L=8 (kymatio's order 2)
_J = 2
_L = 8
CACHE_ENV = "DPLEDGER_FEATURE_CACHE"


def _sph_harm(m: Any, n: Any, theta: Any, phi: Any) -> Any:
    """SciPy's removed ``sph_harm(m, n, theta, phi)`` through its successor ``sph_harm_y``."""
    import scipy.special

    return scipy.special.sph_harm_y(n, m, phi, theta)


def _scattering_class() -> Any:
    """Return kymatio's torch ``Scattering2D`` class.

    kymatio 0.3.0 (the newest release) imports ``scipy.special.sph_harm`` at import time for its
    3-D transform, and SciPy 1.17 removed that name; the 2-D transform used here never calls it.
    The shim gives the old name the same values (``sph_harm_y`` swaps the argument order).
    """
    import scipy.special

    if not hasattr(scipy.special, "sph_harm"):
        scipy.special.sph_harm = _sph_harm
    from kymatio.torch import Scattering2D

    return Scattering2D


def _transform(
    images: torch.Tensor, chunk: int, on_chunk: Callable[[int], None] | None
) -> torch.Tensor:
    """Scattering features of N x C x H x W images: N x 81C x H/4 x W/4, float32."""
    n, channels, height, width = images.shape
    scattering = _scattering_class()(J=_J, shape=(height, width), L=_L)
    parts = []
    with torch.inference_mode():
        for start in range(0, n, chunk):
            out = scattering(images[start : start + chunk].contiguous())
            parts.append(out.reshape(out.shape[0], channels * SCATTERING_CHANNELS, *out.shape[-2:]))
            if on_chunk is not None:
                on_chunk(out.shape[0])
    return (
        torch.cat(parts)
        if parts
        else torch.empty(0, channels * SCATTERING_CHANNELS, height // 4, width // 4)
    )


def _cache_key(data: TrainTestData) -> str:
    import kymatio

    digest = hashlib.sha256(f"scattering J={_J} L={_L} kymatio {kymatio.__version__}".encode())
    for part in (data.train, data.test):
        x, y = part.tensors
        digest.update(str(tuple(x.shape)).encode())
        digest.update(x.contiguous().numpy().tobytes())
        digest.update(y.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _cached(
    data: TrainTestData, compute: Callable[[], tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        return compute()
    path = Path(folder).expanduser() / f"scatternet-{_cache_key(data)}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return saved["train"].float(), saved["test"].float()
    train, test = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}")
    torch.save({"train": train, "test": test}, partial)
    os.replace(partial, path)  # whole or nothing
    return train, test


def scattering_features(
    data: TrainTestData, *, chunk: int = 1024, on_chunk: Callable[[int], None] | None = None
) -> TrainTestData:
    """Replace every image by its ScatterNet features (J=2, L=8; Tramer & Boneh 2021, Sec. 3).

    The map is fixed (no parameter is fitted on any data), so it costs no privacy.
    """

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        return (
            _transform(data.train.tensors[0], chunk, on_chunk),
            _transform(data.test.tensors[0], chunk, on_chunk),
        )

    train, test = _cached(data, compute)
    return TrainTestData(
        TensorDataset(train, data.train.tensors[1]),
        TensorDataset(test, data.test.tensors[1]),
        image_size=int(train.shape[-1]),
        num_classes=data.num_classes,
        channels=int(train.shape[1]),
    )


def features_for_model(model: str, data: TrainTestData) -> TrainTestData:
    """The inputs ``model`` trains on: ScatterNet features for ``scatternet-*``, else the images."""
    return scattering_features(data) if model in SCATTERNET_MODELS else data
