"""Pixels: JPEG decoding, resizing and placing rows into batches, in the epoch's threads.

``jpeg``: the libjpeg-turbo codec (simplejpeg), with DCT scaling and the
columns it can decode. ``resize``: antialiased images, nearest-neighbour
masks. ``threads``: the decode threads an epoch owns (GIL released, signals
blocked, gone when the epoch ends). ``placing``: a fetch's rows cropped,
resized and flipped by their geometry, straight into the batch tensors.

Imports ``anyloader._core``, ``_plan``, ``_stats`` and ``_batch``.
"""
