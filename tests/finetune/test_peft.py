"""PEFT interop both ways: our LoRA adapters load into ``peft`` on ``transformers``'
``T5EncoderModel`` with the same hidden states, and a PEFT adapter applies here the same."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ankh
from ankh import lora

pytestmark = pytest.mark.slow  # torch + transformers + peft start-up

torch = pytest.importorskip("torch", reason="torch is the test extra's reference")
peft = pytest.importorskip("peft", reason="peft is in the test extra")
from transformers import T5EncoderModel  # noqa: E402

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVAKK"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    m = ankh.load("tiny", dtype="float32")
    d = tmp_path_factory.mktemp("hf")
    m.save_hf(d)
    return m, str(d)


def _batch(m):
    toks = m.tokenize(SEQS)
    ids, mask = ankh.batching.pad_rows(toks)
    return ids, mask


def _hf_hidden(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    return out.last_hidden_state.numpy()


def _ours(m, ids, mask):
    module = nnx.merge(m.graphdef, m.params)
    return np.asarray(module.encode(jnp.asarray(ids), jnp.asarray(mask)))


def test_our_adapter_loads_in_peft(base, tmp_path):
    m, hf_dir = base
    module = nnx.merge(m.graphdef, nnx.clone(m.params))
    lora.attach(module.encoder, lora.LoraConfig(), nnx.Rngs(0))
    for att in lora._attentions(module.encoder):  # trained-looking adapters, not zeros
        for t in lora.TARGETS:
            ad = getattr(att, f"lora_{t}")
            ad.lora_b[...] = 0.3 * np.random.default_rng(len(t)).standard_normal(ad.lora_b.shape)
    lora.save_peft_dir(str(tmp_path), module.encoder, lora.LoraConfig(), "tiny")
    ids, mask = _batch(m)
    ours = np.asarray(module.encode(jnp.asarray(ids), jnp.asarray(mask)))
    hf = peft.PeftModel.from_pretrained(T5EncoderModel.from_pretrained(hf_dir), str(tmp_path))
    theirs = _hf_hidden(hf.eval(), ids, mask)
    keep = mask.astype(bool)
    assert np.abs(ours[keep] - _ours(m, ids, mask)[keep]).max() > 1e-2  # the adapter acts
    np.testing.assert_allclose(ours[keep], theirs[keep], atol=1e-5)


def test_peft_adapter_applies_here(base, tmp_path):
    m, hf_dir = base
    conf = peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["q", "v", "o"], init_lora_weights=False
    )
    torch.manual_seed(0)
    hf = peft.get_peft_model(T5EncoderModel.from_pretrained(hf_dir), conf).eval()
    hf.save_pretrained(str(tmp_path))
    ids, mask = _batch(m)
    theirs = _hf_hidden(hf, ids, mask)
    tuned = lora.apply_peft(m, str(tmp_path))
    keep = mask.astype(bool)
    np.testing.assert_allclose(_ours(tuned, ids, mask)[keep], theirs[keep], atol=1e-5)
    assert np.abs(theirs[keep] - _ours(m, ids, mask)[keep]).max() > 1e-2  # base is unchanged


def test_unsupported_peft_settings_are_refused(base, tmp_path):
    m, hf_dir = base
    conf = peft.LoraConfig(r=2, target_modules=["q"], use_rslora=True)
    peft.get_peft_model(T5EncoderModel.from_pretrained(hf_dir), conf).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="use_rslora"):
        lora.apply_peft(m, str(tmp_path))
