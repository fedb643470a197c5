"""The error for a checkpoint that cannot be loaded, in a module of its own: model.hub (which every
`capfilt` command imports, through the settings) raises it without importing torch."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensors."""
