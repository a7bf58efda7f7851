"""How rows become batches: forms decided up front, tensors filled in place.

``columns``: what a column is (``ColumnInfo``) and its role under a geometry,
which decide whether it stacks. ``chunk``: one fetch's checked rows.
``builder``: batches and the per-sample ``Collate``. ``slabs``: batch tensors
that decode threads write straight into. ``memory``: where batch tensors live
(shared memory in DataLoader workers) and when they are reused.

Imports ``anyloader._core``, ``_plan`` and ``_stats``.
"""
