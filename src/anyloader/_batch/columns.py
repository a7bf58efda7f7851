"""What each column is, decided before the first fetch: its role under a geometry, its batch form.

A source may describe its columns (``Source.column_info()``): deeplake from its
schema, ``MemorySource`` from its arrays. From that and the options alone,
never from the rows of a batch:

* **role**: ``"image"`` columns are resampled with antialiasing under a
  geometry, ``"mask"`` columns (BinaryMask, SegmentMask, and those a geometry
  names in ``masks=``) by nearest neighbour; other columns pass through.
* **form** in batch mode: a column whose every row has one shape and a
  numeric dtype (a fixed-shape array or scalar, or an image or mask a geometry
  gives a fixed size) stacks into a tensor; any other (a variable-size image
  without a geometry, ragged arrays, boxes, text, a column nothing describes)
  is a list, in every batch of every epoch.

So a column never changes form between batches, and a dataset whose rows
break their own schema fails on the row that does, naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np

    from .._plan.geometry import Geometry

__all__ = ["ColumnInfo", "ColumnRoles", "column_roles", "describe"]

Kind = Literal["image", "mask", "boxes", "text", "array", "unknown"]
_NUMERIC = frozenset("biuf")  # bool, int, uint, float: what a tensor holds here


@dataclass(frozen=True)
class ColumnInfo:
    """What a source knows of a column before reading it.

    ``shape`` is a row's shape with ``None`` for sides that vary (``None``
    itself: not even the number of axes is known); ``dtype`` the element
    type, if known; ``jpeg`` whether the stored values are JPEG bytes that
    anyloader decodes itself.
    """

    kind: Kind = "unknown"
    dtype: np.dtype[Any] | None = None
    shape: tuple[int | None, ...] | None = None
    jpeg: bool = False

    @property
    def fixed(self) -> bool:
        """Every row has the same numeric shape and dtype: rows stack."""
        return (
            self.dtype is not None
            and self.dtype.kind in _NUMERIC
            and self.shape is not None
            and all(side is not None for side in self.shape)
        )


UNKNOWN = ColumnInfo()


def describe(source: object, names: Sequence[str]) -> dict[str, ColumnInfo]:
    """``source``'s description of ``names`` (unknown where it has none)."""
    describe_ = getattr(source, "column_info", None)
    known: Mapping[str, ColumnInfo] = describe_() if callable(describe_) else {}
    return {name: known.get(name, UNKNOWN) for name in names}


@dataclass(frozen=True)
class ColumnRoles:
    """Columns' roles and batch forms for one loader's options.

    ``roles`` maps each image and mask column the geometry resamples to
    ``"image"`` or ``"mask"``; ``reference`` is the column whose size places
    the crop (the first image, else the first mask); ``stacks`` names the
    columns batch mode makes tensors of.
    """

    info: Mapping[str, ColumnInfo]
    roles: Mapping[str, Literal["image", "mask"]]
    reference: str | None
    stacks: frozenset[str]


def column_roles(source: object, columns: Sequence[str], geometry: Geometry | None) -> ColumnRoles:
    """Roles and forms of ``columns`` of ``source`` under ``geometry``.

    Raises:
        ValueError: the geometry names a mask column that is not selected, or
            there is no image or mask column for it to place.
    """
    info = describe(source, columns)
    roles: dict[str, Literal["image", "mask"]] = {}
    if geometry is not None:
        unknown = [name for name in geometry.masks if name not in columns]
        if unknown:
            raise ValueError(
                f"geometry masks={list(geometry.masks)} names {unknown}, which are not read; "
                f"the columns are {list(columns)}"
            )
        for name in columns:
            if name in geometry.masks or info[name].kind == "mask":
                roles[name] = "mask"
            elif info[name].kind == "image":
                roles[name] = "image"
        if not roles:
            kinds = {name: i.kind for name, i in info.items()}
            raise ValueError(
                f"a geometry needs an image or mask column to place, and the columns are {kinds}; "
                "name label images stored otherwise in the geometry's masks=(...)"
            )
    images = [name for name, role in roles.items() if role == "image"]
    reference = images[0] if images else next(iter(roles), None)
    fixed_output = geometry is not None and geometry.output_size is not None
    stacks = frozenset(
        name for name in columns if info[name].fixed or (name in roles and fixed_output)
    )
    return ColumnRoles(info, roles, reference, stacks)
