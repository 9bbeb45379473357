"""The JAX model equals HF transformers' PyTorch T5 on the same weights (fp32, 1e-5)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # test extra; .ci/run installs it
import jax  # noqa: E402
from flax import nnx  # noqa: E402

import ankh  # noqa: E402
from ankh.convert import read_hf_tensors  # noqa: E402
from tests.ankh.hf_reference import hf_model, parity_config, real_sequences  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module", params=["gelu_new", "silu"])
def pair(request, tmp_path_factory):
    cfg = parity_config(request.param)
    ref = hf_model(cfg, seed=1)
    path = tmp_path_factory.mktemp(f"hf-{request.param}")
    ref.save_pretrained(path)  # safetensors
    return cfg, ref, ankh.load(str(path)), path


def _batch(model, seqs):
    ids, mask = model.tokenizer.batch_encode(seqs)
    return ids, mask


def _forward(model, ids, mask, dec_in):
    @jax.jit
    def run(params):
        m = nnx.merge(model.graphdef, params)
        enc = m.encode(ids, mask)
        return enc, m.decode(dec_in, enc, mask)

    return tuple(np.asarray(x) for x in run(model.params))


def test_encoder_and_decoder_match_hf(pair):
    cfg, ref, ours, _ = pair
    seqs = real_sequences(6, 20, 300, seed=3)  # long enough to reach the far buckets
    ids, mask = _batch(ours, seqs)
    rng = np.random.default_rng(0)
    dec_in = rng.integers(3, 28, size=(len(seqs), 150)).astype(np.int32)
    dec_in[:, 0] = cfg.decoder_start_token_id
    with torch.no_grad():
        out = ref(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            decoder_input_ids=torch.tensor(dec_in, dtype=torch.long),
        )
    ref_enc = out.encoder_last_hidden_state.numpy()
    ref_logits = out.logits.numpy()
    enc, logits = _forward(ours, ids, mask, dec_in)
    m = mask.astype(bool)
    assert np.abs(enc[m] - ref_enc[m]).max() < TOL * max(1.0, np.abs(ref_enc).max())
    assert np.abs(logits - ref_logits).max() < TOL * max(1.0, np.abs(ref_logits).max())


def test_embed_api_matches_hf_per_residue(pair):
    _, ref, ours, _ = pair
    seqs = real_sequences(5, 30, 200, seed=4)
    per_res = ours.embed(seqs, per_residue=True)
    pooled = ours.embed(seqs)
    for s, r, p in zip(seqs, per_res, pooled):
        ids = torch.tensor(ours.tokenizer.encode(s)[None], dtype=torch.long)
        with torch.no_grad():
            h = ref.encoder(input_ids=ids).last_hidden_state[0, :-1].numpy()  # drop </s>
        assert r.shape == (len(s), h.shape[1])
        np.testing.assert_allclose(r, h, atol=TOL, rtol=0)
        np.testing.assert_allclose(p, h.mean(0), atol=TOL, rtol=0)


def test_export_from_pretrained_import_is_bit_exact(pair, tmp_path):
    _cfg, _, ours, src = pair
    out = tmp_path / "exported"
    ours.save_hf(out)
    from transformers import T5ForConditionalGeneration

    reloaded = T5ForConditionalGeneration.from_pretrained(out)
    ref_sd = {k: v.numpy() for k, v in reloaded.state_dict().items()}
    orig = read_hf_tensors(str(src))
    for name, w in orig.items():
        assert np.array_equal(ref_sd[name], w), name
    again = ankh.load(str(out)).flat_params()
    for path, w in ours.flat_params().items():
        assert np.array_equal(again[path], w), path
