"""The one error a checkpoint's contents raise when they are wrong.

Uploaded files are input, not invariants: every check that a file's contents can fail
raises CheckpointError (never `assert`, which `python -O` removes) with a reason an
admin can act on, naming the tensor, key or value and what was expected.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint (or adapter) is malformed or does not fit its own config."""
