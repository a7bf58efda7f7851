"""Where rows come from: the ``Source`` protocol and its implementations.

``source``: the protocol, ``MemorySource`` and which errors are transient.
``futures``: awaiting deeplake's futures from asyncio or trio. ``deeplake``:
datasets, views and URLs, with our JPEG decode. ``synthetic``: generated
image/mask datasets for the demo and tests. ``faults``: a wrapper that injects
latency, errors and hangs.

Imports every floor below the engine (``_core``, ``_plan``, ``_stats``,
``_batch``, ``_decode``).
"""
