"""Ankh protein language model in JAX/Flax NNX: the model as math (never imports Ray).

``Ankh``, ``load`` and ``AnkhModel`` are imported on first use: the numpy-only modules
(``ankh.config``, ``ankh.tokenizer``, ``ankh.batching``, ``ankh.packing``) then stay
importable by light Ray tasks (packing, merging) without loading JAX.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ankh.config import PRESETS, AnkhConfig, get_preset
from ankh.generation_config import GenerationConfig
from ankh.tokenizer import AnkhTokenizer, TokenizerError

if TYPE_CHECKING:
    from ankh.api import Ankh, load
    from ankh.model import AnkhModel

_JAX_NAMES = {"Ankh": "ankh.api", "load": "ankh.api", "AnkhModel": "ankh.model"}

__all__ = [
    "PRESETS",
    "Ankh",
    "AnkhConfig",
    "AnkhModel",
    "AnkhTokenizer",
    "GenerationConfig",
    "TokenizerError",
    "get_preset",
    "load",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _JAX_NAMES:
        value = getattr(import_module(_JAX_NAMES[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'ankh' has no attribute {name!r}")
