"""The implementations of :class:`volumes.volume.Volume`, one module per format, over what they share
(:mod:`volumes.backends.base`). :func:`volumes.open.open_volume` chooses among them."""
