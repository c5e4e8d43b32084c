"""Model factories as a user would write them, imported by name (model=user_models:FUNCTION)."""

from torch import nn


def small_cnn(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


def raises(num_classes):
    raise RuntimeError("no weights here")


def not_a_module(num_classes):
    return "a string"


def wrong_logits(num_classes):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes + 1))


def needs_64px(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, num_classes))


class Zoo:
    @staticmethod
    def small(num_classes):
        return small_cnn(num_classes)


NOT_CALLABLE = 3
