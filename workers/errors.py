"""Errors raised on workers."""


class WorkerError(Exception):
    """Base of every error raised by :mod:`workers`."""


class BlockError(WorkerError, RuntimeError):
    """A block could not be computed; the message names the block or chunk and the cause."""


class BlockCancelledError(WorkerError):
    """The job was cancelled while this block ran; nothing was recorded done for it."""
