"""Data plane: geometry (boxes, windows, blocks, blending weights) and chunked volume IO. No torch."""

from volumes.box import Box
from volumes.open import open_volume
from volumes.output import create_output
from volumes.padding import read_padded
from volumes.volume import Volume

__all__ = ["Box", "Volume", "create_output", "open_volume", "read_padded"]
