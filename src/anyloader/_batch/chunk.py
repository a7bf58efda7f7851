"""``Chunk``: the rows one fetch returned, and the check that a source kept its contract."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Chunk", "check_columns"]


def _writable(values: Any) -> Any:
    # deeplake hands out read-only views of its own buffers, and torch warns
    # (rightly) when wrapping those. One copy per group, never per row.
    if isinstance(values, np.ndarray):
        return values if values.flags.writeable else np.array(values)
    return [
        np.array(v) if isinstance(v, np.ndarray) and not v.flags.writeable else v for v in values
    ]


def check_columns(values: object, columns: Sequence[str], rows: int) -> dict[str, Any]:
    """The requested ``columns`` of what a source returned, checked: one value per row, in order.

    Raises:
        TypeError: ``values`` is not a mapping, or a column's values are not an
            ordered sequence (a ``set`` would reorder rows silently).
        ValueError: naming the column that is missing or has the wrong length.
    """
    # Once per fetch: exact type tests first, the ABC checks only for other types.
    if type(values) is not dict and not isinstance(values, Mapping):
        raise TypeError(
            f"source.fetch must return a mapping {{column: values}}, got {type(values).__name__}"
        )
    picked: dict[str, Any] = {}
    for name in columns:
        if name not in values:
            raise ValueError(f"source returned no column {name!r} (got {sorted(values)})")
        column = values[name]
        if type(column) is not np.ndarray and (
            not isinstance(column, (np.ndarray, Sequence)) or isinstance(column, (str, bytes))
        ):
            raise TypeError(
                f"source returned {type(column).__name__} for column {name!r}; it must be an "
                "array or a sequence with one value per requested row, in request order"
            )
        if len(column) != rows:
            raise ValueError(
                f"source returned {len(column)} values for column {name!r}, expected {rows}"
            )
        picked[name] = column
    return picked


@dataclass(frozen=True, slots=True)
class Chunk:
    """Rows fetched in one request: shard positions, global indices and ``{column: values}``.

    Built on the event loop, turned into samples by the consumer, so the copy
    that makes arrays writable is paid off the loop thread.
    """

    positions: np.ndarray
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
