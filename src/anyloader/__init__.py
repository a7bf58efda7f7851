"""anyloader: stream Deep Lake datasets into PyTorch with structured concurrency."""

from ._batching import Collate as Collate
from ._bridge import wait_future as wait_future
from ._columns import ColumnInfo as ColumnInfo
from ._dataset import AsyncDataset as AsyncDataset
from ._deeplake_source import DeeplakeSource as DeeplakeSource
from ._faults import FaultySource as FaultySource
from ._geometry import Boxes as Boxes
from ._geometry import RandomResizedCrop as RandomResizedCrop
from ._geometry import Resize as Resize
from ._loader import DataLoader as DataLoader
from ._loader import UnevenStepsWarning as UnevenStepsWarning
from ._options import BACKENDS as BACKENDS
from ._options import Options as Options
from ._plan import Shard as Shard
from ._plan import plan_epoch as plan_epoch
from ._plan import shard_rows as shard_rows
from ._retry import RetryPolicy as RetryPolicy
from ._source import MemorySource as MemorySource
from ._source import Source as Source
from ._state import StateError as StateError
from ._stats import EpochStats as EpochStats
from ._stats import LatencyHistogram as LatencyHistogram
from ._stream import SampleStream as SampleStream
from ._stream import open_stream as open_stream

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
