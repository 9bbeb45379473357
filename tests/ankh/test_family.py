"""The Ankh family by the names people use: presets (parameter counts from their configs),
ankh3's tokenizer.json and task prefixes, and the official ``ankh`` pseudo-likelihood -- each
compared with ``transformers`` on the same random weights."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

import ankh
from ankh.config import HUB_IDS, PRESETS
from ankh.model import AnkhModel
from ankh.resolve import resolve
from ankh.tokenizer import AMINO_ACIDS, TASK_TOKENS, TokenizerError
from tests.ankh._genutil import hf_rows, real_sequences, tiny_pair

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# A small ankh3: its activation, 256 ids and task prefixes, tiny widths.
ANKH3_TINY = PRESETS["tiny"].replace(vocab_size=256, dense_act_fn="silu", task_prefixes=True)


def _params(name: str):
    model = nnx.eval_shape(lambda: AnkhModel(PRESETS[name], nnx.Rngs(0)))
    return model, sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "name,expected",
    [
        ("ankh2-ext1", 1_878_705_152),
        ("ankh2-ext2", 1_878_705_152),
        ("ankh3-large", 1_879_049_216),
        ("ankh3-xl", 5_730_907_136),
    ],
)
def test_family_parameter_counts(name, expected):
    assert _params(name)[1] == expected


def test_ankh3_xl_encoder_is_the_published_size():
    """Published: 3.49B parameters in ankh3-xl's encoder (with its embedding and LM head)."""
    model, _ = _params("ankh3-xl")
    enc = sum(x.size for x in jax.tree.leaves(nnx.state(model.encoder, nnx.Param)))
    assert round((enc + model.shared.size + model.lm_head.size) / 1e9, 2) == 3.49


def test_hub_ids_and_task_prefix_flags():
    assert set(HUB_IDS) <= set(PRESETS)
    assert sorted(HUB_IDS.values()) == sorted(
        f"ElnaggarLab/{n}"
        for n in (
            "ankh-base",
            "ankh-large",
            "ankh2-large",
            "ankh2-ext1",
            "ankh2-ext2",
            "ankh3-large",
            "ankh3-xl",
        )
    )
    for name in HUB_IDS:
        assert PRESETS[name].task_prefixes == name.startswith("ankh3"), name
        tok = resolve(name).tokenizer
        assert (set(TASK_TOKENS) <= set(tok.vocab)) == name.startswith("ankh3"), name
        assert tok.vocab_size == PRESETS[name].vocab_size


def _ankh3_tokenizer_file(path) -> None:
    """A tokenizer.json as a SentencePiece export would write ankh3's: a Unigram model whose
    user-defined [NLU]/[S2S] come right after the control tokens (so the residue ids differ
    from Ankh's), sentinels at the top, ``</s>`` appended by the post-processor."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import Unigram
    from tokenizers.pre_tokenizers import Split
    from tokenizers.processors import TemplateProcessing

    head = ["<pad>", "</s>", "<unk>", *TASK_TOKENS]
    n_extra = 256 - len(head) - len(AMINO_ACIDS)
    pieces = (
        [(t, 0.0) for t in head]
        + [(a, -1.0) for a in AMINO_ACIDS]
        + [(f"<extra_id_{k}>", 0.0) for k in reversed(range(n_extra))]
    )
    tk = Tokenizer(Unigram(pieces, unk_id=2))
    tk.pre_tokenizer = Split("", "isolated")
    specials = head + [f"<extra_id_{k}>" for k in range(n_extra)]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tk.post_processor = TemplateProcessing(
        single="$A </s>", pair="$A $B </s>", special_tokens=[("</s>", 1)]
    )
    tk.save(str(path))


def _hf_tokenizer(path):
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(path), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def ankh3(tmp_path_factory):
    """A random-weight small ankh3 as an HF directory with the ankh3-layout tokenizer.json, our
    model loaded from it, transformers' model and tokenizer loaded from the same files."""
    path = tmp_path_factory.mktemp("ankh3")
    torch.set_num_threads(1)
    ankh.Ankh.random(ANKH3_TINY, seed=7).save_hf(path)
    _ankh3_tokenizer_file(path / "tokenizer.json")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(str(path)).eval()
    return path, ankh.load(str(path)), hf, _hf_tokenizer(path / "tokenizer.json")


def test_ankh3_tokenizer_equals_transformers(ankh3):
    _, model, _, hf_tok = ankh3
    tok = model.tokenizer
    seqs = real_sequences(6, max_len=60) + ["MKXBZUOAC"]
    for s in seqs:
        for prefix in TASK_TOKENS:
            want = hf_tok(prefix + s)["input_ids"]
            assert tok.encode(s, prefix=prefix).tolist() == want
            assert tok.encode(prefix + s).tolist() == want  # written first in the text
        assert tok.encode(s).tolist() == hf_tok(s)["input_ids"]
    assert tok.vocab_size == 256 and tok.task_id("[NLU]") == 3  # ids from the file
    with pytest.raises(TokenizerError, match="task token"):
        ankh.AnkhTokenizer().encode("MKT", prefix="[NLU]")


def test_task_prefixes_recorded_or_read_from_the_tokenizer(ankh3, tmp_path):
    path, model, _, _ = ankh3
    assert model.config.task_prefixes is True
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["ankh_task_prefixes"] is True  # written into the HF config (and our meta)
    del cfg["ankh_task_prefixes"]  # as the hub's own ankh3 config.json: no such key
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.safetensors", "tokenizer.json"):
        (bare / f).write_bytes((path / f).read_bytes())
    (bare / "config.json").write_text(json.dumps(cfg))
    assert resolve(str(bare)).config.task_prefixes is True  # its tokenizer has [NLU]/[S2S]
    (bare / "tokenizer.json").unlink()  # an ankh/ankh2 vocabulary: no prefixes
    assert resolve(str(bare)).config.task_prefixes is False
    assert resolve(str(bare)).tokenizer.task_ids == {}
    # A config that asks for prefixes with a tokenizer.json that lacks them: a clear error.
    (bare / "config.json").write_text(json.dumps(dict(cfg, ankh_task_prefixes=True)))
    ankh.Ankh.random(PRESETS["tiny"]).save_hf(tmp_path / "plain")
    (bare / "tokenizer.json").write_bytes((tmp_path / "plain" / "tokenizer.json").read_bytes())
    with pytest.raises(ValueError, match="task prefixes"):
        resolve(str(bare))


@pytest.mark.timeout(300)
def test_ankh3_embeddings_read_nlu_and_align_with_residues(ankh3):
    _, model, hf, hf_tok = ankh3
    seqs = real_sequences(4, max_len=40, start=20)
    per = model.embed(seqs, per_residue=True)
    pooled = model.embed(seqs)
    for s, p, m in zip(seqs, per, pooled):
        ids = torch.tensor([hf_tok("[NLU]" + s)["input_ids"]])
        with torch.no_grad():
            ref = hf.encoder(input_ids=ids).last_hidden_state.numpy()[0, 1:-1]  # residues only
        assert p.shape == (len(s), model.config.d_model)
        np.testing.assert_allclose(p, ref, atol=1e-4)
        np.testing.assert_allclose(m, ref.mean(0), atol=1e-4)


def _official_pseudo_likelihood(hf, hf_tok, seq: str, prefix: str | None) -> float:
    """The official ``ankh`` likelihood method, written with transformers: every residue
    masked by <extra_id_0> in one batch, decoder fed (start, <extra_id_0>), ``<...>``/``[...]``
    tokens excluded from the softmax, exp of the mean log-probability of the true residues."""
    ids = torch.tensor(hf_tok((prefix or "") + seq)["input_ids"])[None]
    lead = 1 if prefix else 0
    s0 = hf_tok.convert_tokens_to_ids("<extra_id_0>")
    n = len(seq)
    masked = ids.repeat(n, 1)
    masked[torch.arange(n), torch.arange(n) + lead] = s0
    dec = torch.tensor([[hf.config.decoder_start_token_id, s0]]).repeat(n, 1)
    with torch.no_grad():
        logits = hf(
            input_ids=masked, attention_mask=torch.ones_like(masked), decoder_input_ids=dec
        ).logits[:, -1]
    ignore = [i for t, i in hf_tok.get_vocab().items() if t.startswith(("<", "["))]
    logits[:, ignore] = -torch.inf
    logp = torch.log_softmax(logits.double(), -1)
    return float(torch.exp(logp[torch.arange(n), ids[0, lead : lead + n]].mean()))


@pytest.mark.timeout(300)
def test_pseudo_likelihood_equals_the_official_method_ankh3(ankh3):
    _, model, hf, hf_tok = ankh3
    seqs = real_sequences(3, max_len=30, start=40)
    ours = model.pseudo_likelihood(seqs)
    want = [_official_pseudo_likelihood(hf, hf_tok, s, "[NLU]") for s in seqs]
    np.testing.assert_allclose(ours, want, rtol=1e-4)
    per = model.per_residue_log_probs(seqs, residues_only=True)
    assert [len(p) for p in per] == [len(s) for s in seqs]  # aligned with residues
    assert all(0 < x <= 1 for x in ours)


@pytest.mark.timeout(300)
def test_pseudo_likelihood_equals_the_official_method_ankh(tmp_path):
    model, hf = tiny_pair(tmp_path, seed=4)
    hf_tok = _hf_tokenizer(tmp_path / "tokenizer.json")
    seqs = real_sequences(3, max_len=30, start=50)
    want = [_official_pseudo_likelihood(hf, hf_tok, s, None) for s in seqs]
    np.testing.assert_allclose(model.pseudo_likelihood(seqs), want, rtol=1e-4)


@pytest.mark.timeout(300)
def test_ankh3_generation_reads_s2s_and_strips_it(ankh3):
    _, model, hf, hf_tok = ankh3
    inputs = [s[:12] + "<extra_id_0>" + s[14:20] for s in real_sequences(2, max_len=30, start=5)]
    ours = model.generate_ids(inputs, max_new_tokens=6)
    task = set(model.tokenizer.task_ids.values())
    for text, rows in zip(inputs, ours):
        ids = torch.tensor([hf_tok("[S2S]" + text)["input_ids"]])
        with torch.no_grad():
            out = hf.generate(input_ids=ids, max_new_tokens=6, do_sample=False, num_beams=1)
        want = [r[~np.isin(r, list(task))] for r in hf_rows(out.numpy())]
        assert [r.tolist() for r in rows] == [w.tolist() for w in want]
    for text in model.generate(inputs, max_new_tokens=6)[0]:
        assert "[" not in text
