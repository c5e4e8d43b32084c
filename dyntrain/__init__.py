"""dyntrain: Dynamic Training of CNNs on an adaptively resampled subset of the data."""

from dyntrain.config import ConfigError, TrainConfig

__all__ = ["ConfigError", "TrainConfig"]
__version__ = "0.1.0"
