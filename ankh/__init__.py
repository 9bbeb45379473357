"""Ankh protein language model in JAX/Flax NNX: the model as math (never imports Ray)."""

from ankh.api import Ankh, load
from ankh.config import PRESETS, AnkhConfig, get_preset
from ankh.model import AnkhModel
from ankh.tokenizer import AnkhTokenizer, TokenizerError

__all__ = ["Ankh", "AnkhConfig", "AnkhModel", "AnkhTokenizer", "PRESETS", "TokenizerError",
           "get_preset", "load"]
__version__ = "0.1.0"
