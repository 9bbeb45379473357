"""LoRA adapters (``ankh.lora``, flax ``nnx.LoRA``): a fresh adapter changes nothing, merging
keeps the outputs, and the PEFT tensors round-trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ankh
from ankh import lora


@pytest.fixture(scope="module")
def tiny():
    return ankh.load("tiny", dtype="float32")


def _fresh(m):
    """A new module with its own copy of the weights (merge writes into them)."""
    model = nnx.merge(m.graphdef, jax.tree.map(jnp.array, m.params))
    ids = jnp.asarray(np.stack(m.tokenize(["MKTAYIAKQR", "GSHMLEDPVA"])))
    return model, ids, jnp.ones_like(ids)


def _randomise(model, seed=0):
    key = jax.random.key(seed)
    for att in lora._attentions(model.encoder):
        for t in lora.TARGETS:
            ad = getattr(att, f"lora_{t}", None)
            if ad is not None:
                key, sub = jax.random.split(key)
                ad.lora_b[...] = 0.2 * jax.random.normal(sub, ad.lora_b[...].shape)


def test_fresh_adapter_is_identity_and_merge_keeps_outputs(tiny):
    model, ids, seg = _fresh(tiny)
    h0 = model.encode(ids, seg)
    lora.attach(model.encoder, lora.LoraConfig(), nnx.Rngs(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    cfg = model.config
    assert n == cfg.num_layers * 4 * 4 * (cfg.d_model + cfg.num_heads * cfg.d_kv)
    np.testing.assert_array_equal(np.asarray(model.encode(ids, seg)), np.asarray(h0))
    _randomise(model)
    h1 = model.encode(ids, seg)
    assert float(jnp.max(jnp.abs(h1 - h0))) > 1e-2  # the adapters now act
    lora.merge(model.encoder)
    assert not jax.tree.leaves(nnx.state(model, nnx.LoRAParam))  # removed
    np.testing.assert_allclose(np.asarray(model.encode(ids, seg)), np.asarray(h1), atol=1e-5)


def test_peft_tensors_round_trip_and_mismatch_is_an_error(tiny):
    model, ids, seg = _fresh(tiny)
    cfg = lora.LoraConfig(rank=2, alpha=4.0, targets=("q", "v"))
    lora.attach(model.encoder, cfg, nnx.Rngs(0))
    _randomise(model, 3)
    want = model.encode(ids, seg)
    tensors = lora.peft_state(model.encoder)
    key = "base_model.model.encoder.block.0.layer.0.SelfAttention.q"
    assert tensors[f"{key}.lora_A.weight"].shape == (2, model.config.d_model)  # [r, in]
    other, _, _ = _fresh(tiny)
    lora.load_peft_state(other.encoder, tensors, cfg)
    np.testing.assert_allclose(np.asarray(other.encode(ids, seg)), np.asarray(want), atol=1e-6)
    third, _, _ = _fresh(tiny)
    with pytest.raises(ValueError, match="no tensor"):
        lora.load_peft_state(third.encoder, tensors, lora.LoraConfig(rank=2, targets=("k",)))


def test_bad_lora_config():
    with pytest.raises(ValueError, match="rank"):
        lora.LoraConfig(rank=0)
    with pytest.raises(ValueError, match="targets"):
        lora.LoraConfig(targets=("wi",))
