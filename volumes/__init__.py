"""Data plane: geometry (boxes, windows, blocks, blending weights) and chunked volume IO. No torch."""
