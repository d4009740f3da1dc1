"""The CLI's models: a small MLP, the TF Privacy tutorial CNN, and a VGG-style CNN for CIFAR-10.

The CNN is the one of TF Privacy's MNIST DP-SGD tutorial (``mnist_dpsgd_tutorial``): conv 16
filters 8x8 stride 2 'same' padding, ReLU, max-pool 2x2 stride 1, conv 32 filters 4x4 stride 2
'valid', ReLU, max-pool 2x2 stride 1, dense 32, ReLU, dense 10. It has no cross-example layers.

The VGG-style CNN is the CIFAR-10 network of the DP-SGD literature (Papernot et al. 2021,
"Tempered Sigmoid Activations for Deep Learning with Differential Privacy"; Opacus' CIFAR-10
example): three blocks of two 3x3 convolutions (32, 64, 128 channels) and a 2x2 max-pool, with
GroupNorm after each convolution. BatchNorm is refused: it normalizes each example with the
statistics of the whole batch, so an example's output (and gradient) depends on the others and
per-example clipping no longer bounds one record's influence.

The ScatterNet heads (Tramer & Boneh 2021, "Differentially Private Learning Needs Better
Features", Sec. 3 and their code's ``ScatterLinear``/``CNNS``) take the fixed scattering features
of :mod:`dp_core.trainer.features` (81 channels per image channel). Their inputs are normalized
with GroupNorm without learned parameters (27 groups of 3 channels): each example is normalized
with its own statistics only, so the normalization is a fixed per-example map that costs no
privacy (a BatchNorm fitted on the private data would have to be charged).
"""

from __future__ import annotations

from torch import nn

from dp_core.errors import InvalidParameterError
from dp_core.trainer.errors import UnsupportedModelError

__all__ = [
    "MODELS",
    "build_model",
    "mlp",
    "scatter_cnn",
    "scatter_linear",
    "tutorial_cnn",
    "vgg_cnn",
]

MODELS = ("mlp", "cnn", "vgg", "scatternet-linear", "scatternet-cnn")
_SCATTER_GROUPS = 27

BATCHNORM_MESSAGE = (
    "BatchNorm mixes the examples of a batch (each is normalized with the batch's statistics), "
    "so per-example gradients, and DP-SGD's per-example clipping, do not exist; use "
    "norm='group' (GroupNorm, the default)"
)


def mlp(*, image_size: int, num_classes: int, hidden: int = 128, channels: int = 1) -> nn.Module:
    """Flatten, one hidden tanh layer (tanh suits DP-SGD, Papernot et al. 2021), linear head."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * image_size * image_size, hidden),
        nn.Tanh(),
        nn.Linear(hidden, num_classes),
    )


def tutorial_cnn(*, num_classes: int = 10) -> nn.Module:
    """TF Privacy's tutorial CNN for 1x28x28 inputs (about 26,000 parameters)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 8, stride=2, padding=3),
        nn.ReLU(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.ReLU(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, num_classes),
    )


def vgg_cnn(
    *, num_classes: int = 10, channels: int = 3, groups: int = 16, norm: str = "group"
) -> nn.Module:
    """VGG-style CNN for 32x32 images: 3 x (conv, norm, tanh, conv, norm, tanh, max-pool).

    Raises:
        UnsupportedModelError: for ``norm='batch'`` (BatchNorm, see the module docstring).
        InvalidParameterError: for any other norm.
    """
    if norm == "batch":
        raise UnsupportedModelError(BATCHNORM_MESSAGE)
    if norm != "group":
        raise InvalidParameterError("norm", norm, "must be 'group'")
    layers: list[nn.Module] = []
    width_in = channels
    for width in (32, 64, 128):
        for _ in range(2):
            layers += [
                nn.Conv2d(width_in, width, 3, padding=1),
                nn.GroupNorm(min(groups, width), width),
                nn.Tanh(),
            ]
            width_in = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 4 * 4, num_classes))


def _scatter_norm(channels: int) -> nn.Module:
    """GroupNorm of the scattering channels, no affine parameters (a fixed per-example map)."""
    return nn.GroupNorm(_SCATTER_GROUPS, channels, affine=False)


def scatter_linear(*, channels: int, size: int, num_classes: int = 10) -> nn.Module:
    """ScatterNet + linear (Tramer & Boneh 2021): GroupNorm(27, affine=False), flatten, linear."""
    return nn.Sequential(
        _scatter_norm(channels), nn.Flatten(), nn.Linear(channels * size * size, num_classes)
    )


def scatter_cnn(*, channels: int, size: int, num_classes: int = 10, width: int = 64) -> nn.Module:
    """ScatterNet + small CNN: GroupNorm(27), two 3x3 convolutions with tanh, max-pool, linear."""
    pooled = size // 2
    return nn.Sequential(
        _scatter_norm(channels),
        nn.Conv2d(channels, width, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(width * pooled * pooled, num_classes),
    )


def _scatter_head(name: str, *, image_size: int, num_classes: int, channels: int) -> nn.Module:
    if channels % _SCATTER_GROUPS != 0 or channels < 81:
        raise InvalidParameterError(
            "model",
            name,
            f"takes ScatterNet features (81 channels per image channel), got {channels}",
        )
    build = scatter_linear if name == "scatternet-linear" else scatter_cnn
    return build(channels=channels, size=image_size, num_classes=num_classes)


def build_model(name: str, *, image_size: int, num_classes: int, channels: int = 1) -> nn.Module:
    """Return the model ``name`` for square images of ``image_size`` with ``channels``.

    Raises:
        InvalidParameterError: for an unknown model, the CNN on images that are not 1x28x28,
            the VGG CNN on images that are not 32x32, or a ScatterNet head on inputs that are not
            ScatterNet features (see :func:`dp_core.trainer.features.features_for_model`).
    """
    if name.startswith("scatternet-") and name in MODELS:
        return _scatter_head(
            name, image_size=image_size, num_classes=num_classes, channels=channels
        )
    if name == "mlp":
        return mlp(image_size=image_size, num_classes=num_classes, channels=channels)
    if name == "vgg":
        if image_size != 32:
            raise InvalidParameterError(
                "model",
                name,
                f"the VGG CNN needs 32x32 images (cifar10:DIR), got {image_size}x{image_size}",
            )
        return vgg_cnn(num_classes=num_classes, channels=channels)
    if name == "cnn":
        if image_size != 28 or channels != 1:
            raise InvalidParameterError(
                "model",
                name,
                f"the tutorial CNN needs 28x28 images, got {image_size}x{image_size} (use mlp, or mnist:DIR)",
            )
        return tutorial_cnn(num_classes=num_classes)
    raise InvalidParameterError("model", name, f"must be one of {', '.join(MODELS)}")
