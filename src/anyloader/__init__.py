"""anyloader: stream Deep Lake datasets into PyTorch with structured concurrency."""

from ._bridge import wait_future as wait_future
from ._config import BACKENDS as BACKENDS
from ._dataset import AsyncDataset as AsyncDataset
from ._deeplake_source import DeeplakeSource as DeeplakeSource
from ._faults import FaultySource as FaultySource
from ._pipeline import SampleStream as SampleStream
from ._pipeline import open_stream as open_stream
from ._plan import Shard as Shard
from ._plan import plan_epoch as plan_epoch
from ._plan import shard_rows as shard_rows
from ._retry import RetryPolicy as RetryPolicy
from ._source import MemorySource as MemorySource
from ._source import Source as Source

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "AsyncDataset",
    "DeeplakeSource",
    "FaultySource",
    "MemorySource",
    "RetryPolicy",
    "SampleStream",
    "Shard",
    "Source",
    "open_stream",
    "plan_epoch",
    "shard_rows",
    "wait_future",
]
