"""Helpers for tests that compare against HF transformers' PyTorch T5 (test extra only)."""

from __future__ import annotations

from ankh.config import AnkhConfig
from ankh_platform.core.samples import real_sequences  # noqa: F401  (re-exported for tests)


def hf_model(cfg: AnkhConfig, seed: int = 0):
    """A random-weight transformers T5ForConditionalGeneration with ``cfg``'s architecture."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**cfg.to_hf_dict()))
    if not cfg.tie_word_embeddings:  # Ankh's head is its own matrix, not the embedding
        model.lm_head.weight = torch.nn.Parameter(
            torch.randn_like(model.lm_head.weight) * cfg.d_model**-0.5
        )
    return model.eval()


def parity_config(act: str) -> AnkhConfig:
    """Small widths, but Ankh's 64 buckets / 128 max distance and gated activations."""
    return AnkhConfig(
        vocab_size=144,
        d_model=64,
        d_ff=96,
        d_kv=16,
        num_heads=4,
        num_layers=3,
        num_decoder_layers=2,
        relative_attention_num_buckets=64,
        relative_attention_max_distance=128,
        dense_act_fn=act,
    )
