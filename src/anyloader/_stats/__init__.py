"""What an epoch measured, and how it reaches the training process.

``epoch_stats``: ``EpochStats`` and its latency histogram (values that add).
``recorder``: what the engine records while it runs. ``timeline``: the
profile's bounded time series. ``worker_channel``: the shared array through
which DataLoader workers send their stats. ``training_clock``: the training
loop's own time waiting for data.

Imports only ``anyloader._core``.
"""
