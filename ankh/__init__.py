"""Ankh protein language model in JAX/Flax NNX: the model as math (never imports Ray).

``Ankh``, ``load`` and ``AnkhModel`` are imported on first use: the numpy-only modules
(``ankh.config``, ``ankh.tokenizer``, ``ankh.batching``, ``ankh.packing``) then stay
importable by light Ray tasks (packing, merging) without loading JAX.

Module map, in reading order (each module imports only modules above it; flat, so every
``ankh.<module>`` import path stays as it is -- docs/architecture.md says why):

Foundations
  config        the architecture as a frozen dataclass, and the published presets
  storage       local and gs:// paths, atomic writes, the GCS emulator environment
  seeds         independent random streams derived from one user seed
  accelerator   what the backend implies: the compute dtype, whether a fused kernel exists
  batching      every padded [rows, length] shape: the length ladder, batch plans, pad_rows
  tokenizer     the character-level tokenizer with the official ids; the vocabulary facts
The model
  attention     how attention runs (dense, blocked, segments, fused); the one mask builder and NEG_INF
  layers        T5 blocks named as HF names them: RMSNorm, Attention, GatedFFN, RelativeBias
  model         AnkhModel: the Encoder and Decoder stacks, encode, decode, logits
  embedding     encode_pool: ids in, pooled / per-residue embeddings out (every embed entry)
Where a model comes from
  hub           Hugging Face hub ids -> a local snapshot
  convert       HF T5 <-> Ankh parameters: the name map and reshapes
  checkpoint    Orbax pretraining checkpoints: find, verify, read, save
  resolve       what a model reference names (preset, path, run dir, hub id), in one place
Using a model
  generation_config  every generation setting, validated in one place (GenerationConfig)
  kv_cache      the decoder's one-token step over a preallocated KV cache
  decoding      logits warping and the greedy / sampling loop
  beam_search   beam search as HF generate runs it
  infill        masked spans (start, end): the sentinel input, splicing answers back
  generate      Ankh.generate and Ankh.variants (GenerationMixin)
  scoring       log-likelihoods, pseudo-log-likelihood, mutation scores (ScoringMixin)
  api           Ankh and ankh.load: the public model object
Training
  objective     the pretraining objective: 1-gram de-masking, or runs (start, length)
  packing       several (input, target) pairs per row with segment ids and positions
  sharding      logical axis names -> mesh axes: the one rule table
  training      loss, optimizer, the jitted train step, the batch keys (MODEL_KEYS)
  finetune      High-N decoder fine-tuning with the encoder frozen
  flops         FLOP and byte counts, the measured matmul peak
Downstream
  probes        heads on frozen embeddings: linear, MLP, ConvBERT, contacts
  lora          LoRA adapters (flax nnx.LoRA) on the encoder's attention: attach, merge, PEFT names
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
