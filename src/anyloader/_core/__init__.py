"""The floor under everything: argument checks and how our threads treat signals.

``checks``: the ``TypeError``/``ValueError`` every option and state promises
for bad input. ``signals``: threads of ours block SIGINT, and our waits in the
training thread are sliced, so Ctrl-C always reaches training.

Imports nothing of anyloader's.
"""
