"""The inference engine: pure PyTorch, no Django. Public names are re-exported here.

The Engine speaks ids; callers that want text use generate_text (text_stream.py)."""

from .chat_template import ChatTemplate
from .checkpoint import CheckpointInfo, LoadedCheckpoint, default_checkpoint_path, inspect_checkpoint, load_checkpoint
from .config import ModelConfig
from .engine import Engine, GenerationResult
from .errors import CheckpointError
from .model import Step, Transformer
from .sampling import SamplingParams
from .text_stream import TextResult, TextStreamer, generate_text
from .tokenizer import Tokenizer


def context_window(checkpoint: LoadedCheckpoint | CheckpointInfo) -> int:
    """The checkpoint's context length in tokens (an Engine may serve less: Engine.max_seq_len)."""
    return checkpoint.config.max_seq_len


__all__ = [
    "ChatTemplate",
    "CheckpointError",
    "CheckpointInfo",
    "Engine",
    "GenerationResult",
    "LoadedCheckpoint",
    "ModelConfig",
    "SamplingParams",
    "Step",
    "TextResult",
    "TextStreamer",
    "Tokenizer",
    "Transformer",
    "context_window",
    "default_checkpoint_path",
    "generate_text",
    "inspect_checkpoint",
    "load_checkpoint",
]
