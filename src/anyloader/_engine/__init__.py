"""One epoch running: fetches in flight, retries, the loop thread, handing out rows.

``config``: a source, its columns and the validated options, with the request
sizes chosen for it. ``retry``: back-off, jitter and per-attempt timeouts.
``pipeline``: the task group of fetchers under a row budget. ``loop_thread``:
the event loop thread a synchronous iterator drives. ``handout``: rows and
batches cut for the consumer. ``iterator``: the synchronous iterator torch
sees. ``stream``: ``open_stream`` for async code. ``exit``: closing what is
left at interpreter exit.

Imports every floor below it and ``anyloader._options``.
"""
