"""What each epoch reads, in what order, where, and how each row is cropped: pure values.

``order``: keyed permutations (a row's place is computed, never stored).
``plan``: an epoch's plan, shards per rank and worker, the rest after a
resume. ``epochs``: the epoch schedule shared with DataLoader workers.
``rank``: the distributed rank and world size. ``state``: checkpoint state
as a value with named transitions. ``geometry``: the crop, resize and flip of
each row, a pure function of ``(seed, epoch, row)`` like its position.

No I/O, no threads. Imports only ``anyloader._core``.
"""
