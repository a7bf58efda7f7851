"""anyloader: stream Deep Lake datasets into PyTorch with structured concurrency."""

from ._batch.builder import Collate as Collate
from ._batch.columns import ColumnInfo as ColumnInfo
from ._dataset import AsyncDataset as AsyncDataset
from ._engine.retry import RetryPolicy as RetryPolicy
from ._engine.stream import SampleStream as SampleStream
from ._engine.stream import open_stream as open_stream
from ._loader import DataLoader as DataLoader
from ._loader import UnevenStepsWarning as UnevenStepsWarning
from ._options import BACKENDS as BACKENDS
from ._options import Options as Options
from ._plan.geometry import Boxes as Boxes
from ._plan.geometry import RandomResizedCrop as RandomResizedCrop
from ._plan.geometry import Resize as Resize
from ._plan.plan import Shard as Shard
from ._plan.plan import plan_epoch as plan_epoch
from ._plan.plan import shard_rows as shard_rows
from ._plan.state import StateError as StateError
from ._sources.deeplake import DeeplakeSource as DeeplakeSource
from ._sources.faults import FaultySource as FaultySource
from ._sources.futures import wait_future as wait_future
from ._sources.source import MemorySource as MemorySource
from ._sources.source import Source as Source
from ._stats.epoch_stats import EpochStats as EpochStats
from ._stats.epoch_stats import LatencyHistogram as LatencyHistogram

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "AsyncDataset",
    "Boxes",
    "Collate",
    "ColumnInfo",
    "DataLoader",
    "DeeplakeSource",
    "EpochStats",
    "FaultySource",
    "LatencyHistogram",
    "MemorySource",
    "Options",
    "RandomResizedCrop",
    "Resize",
    "RetryPolicy",
    "SampleStream",
    "Shard",
    "Source",
    "StateError",
    "UnevenStepsWarning",
    "open_stream",
    "plan_epoch",
    "shard_rows",
    "wait_future",
]
