"""Turn fetched column groups into per-row samples with writable arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["Chunk", "check_columns"]


def _writable(values: Any) -> Any:
    # deeplake hands out read-only views of its own buffers, and torch warns
    # (rightly) when wrapping those. One copy per group, never per row.
    if isinstance(values, np.ndarray):
        return values if values.flags.writeable else np.array(values)
    return [
        np.array(v) if isinstance(v, np.ndarray) and not v.flags.writeable else v for v in values
    ]


def check_columns(values: Mapping[str, Any], columns: Sequence[str], rows: int) -> None:
    """Check that a source returned one value per row for every requested column.

    Raises:
        ValueError: naming the column that is missing or has the wrong length.
    """
    for name in columns:
        if name not in values:
            raise ValueError(f"source returned no column {name!r} (got {sorted(values)})")
        got = len(values[name])
        if got != rows:
            raise ValueError(f"source returned {got} values for column {name!r}, expected {rows}")


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows fetched in one request: global indices and ``{column: values}``.

    Built on the event loop, turned into samples by the consumer, so the copy
    that makes arrays writable is paid off the loop thread.
    """

    indices: np.ndarray
    values: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.indices)

    def samples(self, *, return_index: bool) -> list[dict[str, Any]]:
        """Return one ``dict`` per row, in order; arrays are writable."""
        columns = {name: _writable(v) for name, v in self.values.items()}
        out = [{name: col[i] for name, col in columns.items()} for i in range(len(self))]
        if return_index:
            for sample, index in zip(out, self.indices.tolist(), strict=True):
                sample["index"] = index
        return out
