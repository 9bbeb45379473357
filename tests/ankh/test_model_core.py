"""Config presets, tokenizer and the embedding API (no torch needed)."""

import jax
import numpy as np
import pytest
from flax import nnx

import ankh
from ankh.config import PRESETS, AnkhConfig
from ankh.model import AnkhModel
from ankh.tokenizer import AnkhTokenizer, TokenizerError


@pytest.mark.parametrize(
    "name,expected",
    [("base", 736_453_632), ("large", 1_878_705_152), ("ankh2-large", 1_878_705_152)],
)
def test_published_parameter_counts(name, expected):
    model = nnx.eval_shape(lambda: AnkhModel(PRESETS[name], nnx.Rngs(0)))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == expected


def test_base_embedding_plus_encoder_count():
    model = nnx.eval_shape(lambda: AnkhModel(PRESETS["base"], nnx.Rngs(0)))
    enc = sum(x.size for x in jax.tree.leaves(nnx.state(model.encoder, nnx.Param)))
    assert enc + model.shared.size == 453_170_688


def test_ankh3_vocab_and_activations():
    assert PRESETS["ankh3-large"].vocab_size == 256
    assert PRESETS["ankh3-large"].activation == "silu"
    assert PRESETS["base"].activation == "gelu_new"
    with pytest.raises(ValueError, match="unknown preset"):
        ankh.get_preset("huge")


def test_official_notebook_encoding():
    tok = AnkhTokenizer()
    seq = "QVQLVESGGGLVQPGGSL" + "".join(f"<extra_id_{i}>" for i in range(5))
    assert tok.encode(seq).tolist() == [
        16,
        6,
        16,
        4,
        6,
        9,
        7,
        5,
        5,
        5,
        4,
        6,
        16,
        13,
        5,
        5,
        7,
        4,
        143,
        142,
        141,
        140,
        139,
        1,
    ]
    assert tok.decode(tok.encode(seq)) == seq


def test_tokenizer_ids_and_normalisation():
    tok = AnkhTokenizer()
    assert tok.encode("ALGVSREDTIPKFQNYMHWCXBOUZ").tolist() == list(range(3, 28)) + [1]
    assert tok.encode(" mk t\n").tolist() == tok.encode("MKT").tolist()
    with pytest.raises(TokenizerError, match=r"'J' at position 3"):
        tok.encode("MKJL")
    with pytest.raises(TokenizerError, match=r"'\*' at position 4"):
        tok.encode("MKT*")
    assert AnkhTokenizer(unknown_to_unk=True).encode("MJ").tolist() == [19, 2, 1]
    ids, mask = tok.batch_encode(["MK", "MKTA"])
    assert ids.tolist() == [[19, 14, 1, 0, 0], [19, 14, 11, 3, 1]]
    assert mask.sum(1).tolist() == [3, 5]


def test_vocabulary_facts_come_from_the_tokenizer():
    import inspect

    from ankh.probes import CONVBERT_HEADS
    from ankh.tokenizer import AMINO_ACIDS, NUM_BASE_IDS, RESIDUE_IDS
    from ankh.training import eval_step
    from ankh_platform.core.samples import VALID
    from ankh_platform.evaluate.embedders import ONEHOT_DIM

    tok = AnkhTokenizer()
    assert [tok.vocab[a] for a in AMINO_ACIDS] == list(RESIDUE_IDS) == list(range(3, 28))
    n_sentinels = tok.vocab_size - NUM_BASE_IDS
    assert NUM_BASE_IDS == 28 == min(tok.sentinel_id(k) for k in range(n_sentinels))
    assert inspect.signature(eval_step).parameters["residues"].default is RESIDUE_IDS
    assert ONEHOT_DIM % CONVBERT_HEADS == 0 and NUM_BASE_IDS <= ONEHOT_DIM < NUM_BASE_IDS + 4
    assert set(AMINO_ACIDS) == VALID
    assert AnkhTokenizer.from_json({"model": {"vocab": {"<pad>": 0, "A": 1}}}).vocab == {
        "<pad>": 0,
        "A": 1,
    }


def test_tokenizer_json_roundtrip(tmp_path):
    model = ankh.load("tiny")
    model.save_hf(tmp_path)
    tok = AnkhTokenizer.from_file(tmp_path / "tokenizer.json")
    assert tok.vocab == model.tokenizer.vocab


def test_hf_config_roundtrip(tmp_path):
    cfg = PRESETS["ankh2-large"]
    assert AnkhConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    # The official Ankh config spells the activation "gated-gelu" (HF: tanh-approximate GELU).
    d = cfg.to_hf_dict() | {"feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu"}
    assert AnkhConfig.from_hf_dict(d).activation == "gelu_new"


@pytest.fixture(scope="module")
def tiny():
    return ankh.load("tiny", seed=3)


def test_padding_never_changes_a_result(tiny):
    from tests.ankh.hf_reference import real_sequences

    seqs = real_sequences(12, 10, 400, seed=1)
    batch = tiny.embed(seqs, batch_tokens=2048)
    per_res = tiny.embed(seqs, per_residue=True, batch_tokens=2048)
    for i, s in enumerate(seqs):
        alone = tiny.embed([s])[0]
        np.testing.assert_allclose(batch[i], alone, atol=1e-5, rtol=0)
        assert per_res[i].shape == (len(s), tiny.config.d_model)
        np.testing.assert_allclose(per_res[i].mean(0), batch[i], atol=1e-5, rtol=0)


def test_one_encoder_program_padded_and_packed_rows_agree(tiny):
    """``ankh.embedding.encode_pool`` on packed rows (the batch job's) equals ``Ankh.embed``."""
    from ankh.embedding import encoder_depth, jit_encoder
    from tests.ankh.hf_reference import real_sequences

    seqs = real_sequences(3, 10, 60, seed=2)
    toks = tiny.tokenize(seqs)
    width = sum(len(t) for t in toks) + 5  # three segments, then padding
    ids, seg, pos = (np.zeros((1, width), np.int32) for _ in range(3))
    wt = np.zeros((1, width), np.float32)
    off = 0
    for s, t in enumerate(toks):
        n = len(t)
        ids[0, off : off + n], seg[0, off : off + n], pos[0, off : off + n] = t, s + 1, np.arange(n)
        wt[0, off : off + n - 1] = 1.0 / (n - 1)  # residues only: </s> weighs 0
        off += n
    out = jit_encoder(tiny.graphdef, per_residue=True, max_segments=4)(
        tiny.params, ids, seg, pos, wt
    )
    np.testing.assert_allclose(
        np.asarray(out["pooled"][0, :3]), tiny.embed(seqs), atol=1e-5, rtol=0
    )
    assert not np.asarray(out["pooled"][0, 3]).any()  # an unused segment
    off = 0
    for t, ref in zip(toks, tiny.embed(seqs, per_residue=True)):
        got = np.asarray(out["hidden"][0, off : off + len(t) - 1])
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        off += len(t)
    assert encoder_depth(None, 4) is None and encoder_depth(0, 4) is None
    assert encoder_depth(4, 4) is None and encoder_depth(2, 4) == 2
    with pytest.raises(ValueError, match="layer must be in 1..4"):
        encoder_depth(5, 4)


def test_embed_bad_input_errors(tiny):
    with pytest.raises(TokenizerError, match="sequence 1 is empty"):
        tiny.embed(["MKT", ""])
    with pytest.raises(TokenizerError, match="sequence 0: invalid residue '1'"):
        tiny.embed(["MK1"])
    with pytest.raises(TokenizerError, match="over the model's max_length"):
        tiny.embed(["A" * (tiny.config.max_length + 1)])
    with pytest.raises(TokenizerError, match="expected a string"):
        tiny.embed([42])
    with pytest.raises(ValueError, match="layer must be"):
        tiny.embed(["MKT"], layer=99)


def test_layer_choice_changes_output(tiny):
    final = tiny.embed(["MKTAYIAKQR"])
    first = tiny.embed(["MKTAYIAKQR"], layer=1)
    assert first.shape == final.shape and not np.allclose(first, final)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        ankh.load(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="config.json"):
        ankh.load(str(tmp_path))
    ankh.load("tiny").save_hf(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt safetensors"):
        ankh.load(str(tmp_path / "ok"))
