"""Assemble fetched chunks into batches, copying each value once: into the batch.

torch's ``default_collate`` turns every sample into a tensor and stacks them,
a second copy after the one that made deeplake's read-only arrays writable,
and measured here at about 2.4 ms of CPU per 512x512x3 image (0.14 ms for a
plain copy). Building the batch tensor ourselves and copying each fetched
group straight into it is the one copy the batch needs anyway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from .chunk import Chunk
    from .columns import ColumnInfo
    from .memory import BatchMemory
    from .slabs import BatchSlabs

__all__ = ["BatchBuilder", "Collate"]

_NUMERIC = frozenset("biufc")  # bool, int, uint, float, complex: what a tensor holds


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    # An empty writable array of the same dtype: asking deeplake's read-only
    # one would make torch warn.
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


def _form(
    name: str, parts: Sequence[Any], described: ColumnInfo | None = None
) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """The dtype and row shape of a column that stacks; every row must have them.

    Raises:
        TypeError: naming the column, when its rows have more than one dtype or
            shape, a dtype that is not numeric, or not the dtype and shape its
            source described.
    """
    forms: set[tuple[np.dtype[Any], tuple[int, ...]]] = set()
    for part in parts:
        if isinstance(part, np.ndarray) and part.ndim >= 1:
            forms.add((part.dtype, part.shape[1:]))  # stacked rows: one form
        else:
            forms.update((a.dtype, a.shape) for a in map(np.asarray, part))
    if len(forms) == 1:
        ((dtype, shape),) = forms
        expected = (described.dtype, described.shape) if described and described.fixed else None
        if dtype.kind in _NUMERIC and expected in (None, (dtype, shape)):
            return dtype, shape
        if expected is not None:
            raise TypeError(
                f"batch mode: the source describes column {name!r} as {expected[0]} "
                f"{expected[1]}, and its rows here are {dtype} {shape}: the data breaks its "
                "description"
            )
    shown = sorted(f"{dtype} {shape}" for dtype, shape in forms)
    raise TypeError(
        f"batch mode: column {name!r} stacks (the source describes every row with one numeric "
        f"shape, or a geometry gives it one), but its rows here are {shown}: the data breaks "
        "its description"
    )


def _as_tensor(
    parts: Sequence[Any],
    rows: int,
    form: tuple[np.dtype[Any], tuple[int, ...]],
    memory: BatchMemory,
) -> torch.Tensor:
    dtype, row_shape = form
    out = memory.empty((rows, *row_shape), _torch_dtype(dtype))
    view = out.numpy()
    at = 0
    for part in parts:
        for_rows = part if isinstance(part, np.ndarray) else np.stack(list(part))
        view[at : at + len(for_rows)] = for_rows
        at += len(for_rows)
    return out


def _as_list(parts: Sequence[Any]) -> list[Any]:
    values: list[Any] = []
    for part in parts:
        for v in part:
            writable = not isinstance(v, np.ndarray) or v.flags.writeable
            values.append(v if writable else np.array(v))
    return values


class BatchBuilder:
    """Cuts a stream of chunks into batches of ``batch_size`` rows, in order.

    A batch is ``{column: tensor}`` for the columns in ``stacks`` (decided
    before the first fetch, see :mod:`anyloader._batch.columns`), ``{column: list}``
    for the rest, plus ``"index": int64 tensor`` with ``return_index``. Every
    batch has ``batch_size`` rows except the last one of the stream.

    Guarantee: a column's form never changes, within a stream or between
    epochs: it is given, not read off the rows.

    Raises:
        TypeError: from :meth:`add`/:meth:`finish`, naming a column in ``stacks``
            whose rows do not have one dtype and shape (data that breaks its
            source's description).
    """

    def __init__(
        self,
        batch_size: int,
        *,
        return_index: bool,
        memory: BatchMemory,
        slabs: BatchSlabs | None = None,
        stacks: frozenset[str] = frozenset(),
        described: Mapping[str, ColumnInfo] | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.stacks = stacks
        self.described = described or {}
        self.slabs = slabs  # batch tensors fetches decoded into in place (ordered mode)
        self._batches = 0  # batches cut so far: the next one's index in the plan
        self.return_index = return_index
        self.memory = memory
        self._chunks: list[Chunk] = []
        self._offset = 0  # rows of _chunks[0] already in earlier batches
        self._rows = 0  # rows held, not yet in a batch

    def add(self, chunk: Chunk) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Take ``chunk``; yield every batch it completes, with the positions of its rows."""
        self._chunks.append(chunk)
        self._rows += len(chunk)
        while self._rows >= self.batch_size:
            yield self._take(self.batch_size)

    def finish(self) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
        """Yield the last, partial batch if rows are left."""
        if self._rows:
            yield self._take(self._rows)

    def _column(self, name: str, parts: Sequence[Any], rows: int) -> Any:
        filled = None if self.slabs is None else self.slabs.take(name, self._batches)
        if name not in self.stacks:
            return _as_list(parts)
        form = _form(name, parts, self.described.get(name))
        if filled is not None and (filled.numpy().dtype, tuple(filled.shape[1:])) == form:
            return filled  # decoded straight into this batch's tensor: no copy
        return _as_tensor(parts, rows, form, self.memory)

    def _take(self, rows: int) -> tuple[dict[str, Any], np.ndarray]:
        pieces: list[tuple[Chunk, int, int]] = []
        need = rows
        while need:
            chunk = self._chunks[0]
            stop = min(len(chunk), self._offset + need)
            pieces.append((chunk, self._offset, stop))
            need -= stop - self._offset
            if stop == len(chunk):
                self._chunks.pop(0)
                self._offset = 0
            else:
                self._offset = stop
        self._rows -= rows
        batch = {
            name: self._column(name, [c.values[name][a:b] for c, a, b in pieces], rows)
            for name in pieces[0][0].values
        }
        self._batches += 1
        if self.return_index:
            batch["index"] = torch.from_numpy(
                np.concatenate([c.indices[a:b] for c, a, b in pieces])
            )
        return batch, np.concatenate([c.positions[a:b] for c, a, b in pieces])


class Collate:
    """Collates samples as torch's ``default_collate`` does, keeping ragged columns as lists.

    A sample column in ``stacks`` (one numeric shape in every row, see
    :mod:`anyloader._batch.columns`) and the ``index``/``epoch``/``geometry`` values
    anyloader adds become tensors; any other (ragged arrays, boxes, text) a
    list of the rows' values, in every batch. After a per-sample ``transform``
    (``transformed=True``) the columns are the transform's, not the source's:
    a column then stacks when every value of the batch is a number or a numeric
    array or tensor of one shape, as with ``default_collate``, and is a list
    otherwise. Samples that are not dicts go to ``default_collate`` whole.

    numpy arrays are stacked by numpy, not ``torch.stack``: torch's copy would
    run on the training thread's OpenMP team, which spins on the cores the
    decode threads need (measured 206 -> 307 rows/s with one torch thread).
    Picklable: give it to DataLoader workers as ``collate_fn``.
    """

    _ADDED = frozenset({"index", "epoch", "geometry"})

    def __init__(self, stacks: frozenset[str], *, transformed: bool = False) -> None:
        self.stacks = stacks | self._ADDED
        self.transformed = transformed

    def __call__(self, samples: Sequence[Any]) -> Any:
        from torch.utils.data import default_collate

        if not samples or not all(isinstance(s, dict) for s in samples):
            return default_collate(list(samples))
        out = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if key in self.stacks or (self.transformed and _one_form(values)):
                out[key] = _stacked(values)
            else:
                out[key] = [_writable(v) for v in values]
        return out

    def __repr__(self) -> str:
        return f"anyloader.Collate(stacks={sorted(self.stacks)}, transformed={self.transformed})"


def _one_form(values: Sequence[Any]) -> bool:
    """Every value a number, or a numeric array or tensor, all of one shape and dtype."""
    forms: set[tuple[str, object, tuple[int, ...]]] = set()
    for v in values:
        if isinstance(v, torch.Tensor):
            forms.add(("tensor", v.dtype, tuple(v.shape)))
        elif isinstance(v, (np.ndarray, np.generic, int, float, bool)):
            a = np.asarray(v)
            if a.dtype.kind not in _NUMERIC:
                return False
            forms.add(("array", a.dtype, a.shape))
        else:
            return False
        if len(forms) > 1:
            return False
    return True


def _stacked(values: Sequence[Any]) -> Any:
    """One batch tensor of ``values``: numpy stacks numpy, ``default_collate`` the rest."""
    from torch.utils.data import default_collate

    if values and all(isinstance(v, (np.ndarray, np.generic)) for v in values):
        stacked = np.stack(values)
        if stacked.dtype.kind in _NUMERIC:
            return torch.from_numpy(stacked)
    return default_collate(list(values))


def _writable(value: Any) -> Any:
    return np.array(value) if isinstance(value, np.ndarray) and not value.flags.writeable else value
