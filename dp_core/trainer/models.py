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
"""

from __future__ import annotations

from torch import nn

from dp_core.errors import InvalidParameterError
from dp_core.trainer.errors import UnsupportedModelError

__all__ = ["MODELS", "build_model", "mlp", "tutorial_cnn", "vgg_cnn"]

MODELS = ("mlp", "cnn", "vgg")

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


def build_model(name: str, *, image_size: int, num_classes: int, channels: int = 1) -> nn.Module:
    """Return the model ``name`` for square images of ``image_size`` with ``channels``.

    Raises:
        InvalidParameterError: for an unknown model, the CNN on images that are not 1x28x28,
            or the VGG CNN on images that are not 32x32.
    """
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
