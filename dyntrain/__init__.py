"""dyntrain: Dynamic Training of CNNs on an adaptively resampled subset of the data.

    from dyntrain import TrainConfig, Trainer, load_dataset
    trainer = Trainer(TrainConfig(policy="dynamic", alpha=25_000, beta=0.7), load_dataset("cifar10"))
    for metrics in trainer: print(metrics["epoch"], metrics["val_acc"])
"""

from importlib.metadata import PackageNotFoundError, version

from dyntrain.config import ConfigError, TrainConfig
from dyntrain.data import DataError, Dataset, load_dataset, make_split
from dyntrain.engine import Trainer
from dyntrain.runs import load_checkpoint, save_checkpoint
from dyntrain.sampler import SubsetSampler
from dyntrain.sampling import make_policy

__all__ = [
    "ConfigError", "DataError", "Dataset", "SubsetSampler", "TrainConfig", "Trainer",
    "load_checkpoint", "load_dataset", "make_policy", "make_split", "save_checkpoint",
]
try:
    __version__ = version("dyntrain")  # pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree on PYTHONPATH, never installed
    __version__ = "0+source"
