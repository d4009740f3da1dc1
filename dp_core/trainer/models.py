"""The CLI's models: a small MLP and the TF Privacy tutorial CNN.

The CNN is the one of TF Privacy's MNIST DP-SGD tutorial (``mnist_dpsgd_tutorial``): conv 16
filters 8x8 stride 2 'same' padding, ReLU, max-pool 2x2 stride 1, conv 32 filters 4x4 stride 2
'valid', ReLU, max-pool 2x2 stride 1, dense 32, ReLU, dense 10. It has no cross-example layers.
"""

from __future__ import annotations

from torch import nn

from dp_core.errors import InvalidParameterError

__all__ = ["MODELS", "build_model", "mlp", "tutorial_cnn"]

MODELS = ("mlp", "cnn")


def mlp(*, image_size: int, num_classes: int, hidden: int = 128) -> nn.Module:
    """Flatten, one hidden tanh layer (tanh suits DP-SGD, Papernot et al. 2021), linear head."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(image_size * image_size, hidden),
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


def build_model(name: str, *, image_size: int, num_classes: int) -> nn.Module:
    """Return the model ``name`` for square 1-channel images of ``image_size``.

    Raises:
        InvalidParameterError: for an unknown model, or the CNN on images that are not 28x28.
    """
    if name == "mlp":
        return mlp(image_size=image_size, num_classes=num_classes)
    if name == "cnn":
        if image_size != 28:
            raise InvalidParameterError(
                "model",
                name,
                f"the tutorial CNN needs 28x28 images, got {image_size}x{image_size} (use mlp, or mnist:DIR)",
            )
        return tutorial_cnn(num_classes=num_classes)
    raise InvalidParameterError("model", name, f"must be one of {', '.join(MODELS)}")
