"""The inference engine: pure PyTorch, no Django. Public names are re-exported here."""

from .chat_template import ChatTemplate
from .checkpoint import CheckpointInfo, default_checkpoint_path, inspect_checkpoint
from .config import ModelConfig
from .tokenizer import Tokenizer

__all__ = [
    "ChatTemplate",
    "CheckpointInfo",
    "ModelConfig",
    "Tokenizer",
    "default_checkpoint_path",
    "inspect_checkpoint",
]
