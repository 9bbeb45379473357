"""Ankh's character-level tokenizer with the official ids.

pad 0, ``</s>`` 1, ``<unk>`` 2, amino acids 3..27, sentinels ``<extra_id_0>`` = vocab-1 counting
down. One token per residue, ``</s>`` appended, no BOS. ankh3 adds two task tokens, ``[NLU]``
and ``[S2S]``, put first (``encode(..., prefix=...)`` or written at the start of the text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ankh.batching import pad_rows

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids PAD_ID, EOS_ID, UNK_ID
AMINO_ACIDS = "ALGVSREDTIPKFQNYMHWCXBOUZ"  # ids 3..27 in this order
TASK_TOKENS = ("[NLU]", "[S2S]")  # ankh3: understanding (embed, score) / sequence-to-sequence
SENTINEL_RE = re.compile(
    r"<extra_id_(\d+)>"
)  # the sentinel spelling (also counted by Serve's limits)
_TASK_RE = re.compile(r"^\[(NLU|S2S)\]")
_WS = str.maketrans("", "", " \t\r\n")


class TokenizerError(ValueError):
    """A sequence the tokenizer cannot encode (the message names the letter and position)."""


def base_vocab() -> dict[str, int]:
    """The official ids below the sentinels: specials, then one id per residue letter."""
    vocab = dict(zip(SPECIAL_TOKENS, (PAD_ID, EOS_ID, UNK_ID)))
    vocab.update({aa: len(SPECIAL_TOKENS) + i for i, aa in enumerate(AMINO_ACIDS)})
    return vocab


# Vocabulary facts, derived from the official ids (never restated as numbers elsewhere):
# residue ids (3..27) -- what a "residue target" is in evaluation metrics and synthetic
# benchmark data; and the number of ids below the sentinels (28) -- the one-hot width.
RESIDUE_IDS = range(base_vocab()[AMINO_ACIDS[0]], base_vocab()[AMINO_ACIDS[-1]] + 1)
NUM_BASE_IDS = len(base_vocab())


class AnkhTokenizer:
    def __init__(
        self,
        vocab: dict[str, int] | None = None,
        vocab_size: int = 144,
        unknown_to_unk: bool = False,
        task_tokens: bool = False,
    ) -> None:
        if vocab is None:
            vocab = base_vocab()
            if task_tokens:  # our ids for them (a real ankh3 brings its own tokenizer.json)
                vocab.update({t: len(vocab) + k for k, t in enumerate(TASK_TOKENS)})
            n_sentinels = vocab_size - len(vocab)
            vocab.update({f"<extra_id_{k}>": vocab_size - 1 - k for k in range(n_sentinels)})
        self.vocab = dict(vocab)
        self.inv = {i: t for t, i in self.vocab.items()}
        self.vocab_size = max(self.vocab.values()) + 1
        self.unknown_to_unk = unknown_to_unk
        self.pad_id = self.vocab.get("<pad>", PAD_ID)
        self.eos_id = self.vocab.get("</s>", EOS_ID)
        self.unk_id = self.vocab.get("<unk>", UNK_ID)
        self._char = np.full(256, -1, dtype=np.int32)  # ASCII letter -> id lookup
        for tok, i in self.vocab.items():
            if len(tok) == 1 and ord(tok) < 256:
                self._char[ord(tok)] = i
        self.residue_letters = "".join(t for t in self.vocab if len(t) == 1 and t.isalpha())
        self.task_ids = {t: self.vocab[t] for t in TASK_TOKENS if t in self.vocab}

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, **kw) -> AnkhTokenizer:
        """Load the vocabulary from an HF ``tokenizer.json`` (file or directory)."""
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        return cls.from_json(json.loads(p.read_text()), source=str(p), **kw)

    @classmethod
    def from_json(cls, data: dict, source: str = "tokenizer.json", **kw) -> AnkhTokenizer:
        """The vocabulary of a parsed HF ``tokenizer.json`` (read from anywhere, e.g. gs://)."""
        model = data.get("model", {})
        raw = model.get("vocab", {})
        vocab: dict[str, int] = {}
        if isinstance(raw, list):  # Unigram: [[piece, score], ...], id = index
            vocab = {piece: i for i, (piece, *_rest) in enumerate(raw)}
        elif isinstance(raw, dict):  # WordLevel / BPE
            vocab = dict(raw)
        for tok in data.get("added_tokens", []):
            vocab[tok["content"]] = tok["id"]
        # SentencePiece marks word starts with U+2581; single residues may carry it.
        for piece, i in list(vocab.items()):
            if piece.startswith("\u2581") and len(piece) == 2 and piece[1] not in vocab:
                vocab[piece[1]] = i
        if not vocab:
            raise ValueError(f"{source}: no vocabulary found")
        return cls(vocab, **kw)

    def sentinel_id(self, k: int) -> int:
        tok = f"<extra_id_{k}>"
        if tok not in self.vocab:
            raise TokenizerError(f"sentinel {tok} is not in the vocabulary")
        return self.vocab[tok]

    def task_id(self, token: str) -> int:
        """Id of a task token (``[NLU]``/``[S2S]``); a clear error if the vocabulary lacks it."""
        if token not in self.task_ids:
            raise TokenizerError(
                f"task token {token!r} is not in the vocabulary "
                f"(has: {sorted(self.task_ids) or 'none'})"
            )
        return self.task_ids[token]

    def residue_table(self, size: int | None = None) -> np.ndarray:
        """``[size]`` bool, True at the id of every residue letter of this vocabulary (default
        size: ``vocab_size``; a model may have more ids than its tokenizer). What a "residue
        target" is for evaluation: ankh's ids 3..27, but wherever an HF tokenizer.json puts them."""
        size = self.vocab_size if size is None else size
        ids = [self.vocab[c] for c in self.residue_letters]
        if any(i >= size for i in ids):
            raise ValueError(f"residue ids up to {max(ids)} do not fit a table of {size} ids")
        table = np.zeros(size, bool)
        table[ids] = True
        return table

    def special_ids(self) -> list[int]:
        """Ids of every token that is not a residue: ``<...>`` and ``[...]`` (as the official
        ``ankh`` likelihood leaves them out of a residue's distribution)."""
        return sorted({i for t, i in self.vocab.items() if t.startswith(("<", "["))})

    # ---- encoding ----------------------------------------------------------------------------
    def normalize(self, seq: str) -> str:
        return seq.translate(_WS).upper() if "<" not in seq else _norm_keep_sentinels(seq)

    def encode(
        self,
        seq: str,
        add_eos: bool = True,
        allow_sentinels: bool = True,
        prefix: str | None = None,
    ) -> np.ndarray:
        """Ids of one sequence (``</s>`` appended). Sentinels like ``<extra_id_0>`` are allowed.

        ``prefix`` (``"[NLU]"``/``"[S2S]"``) is put first, unless the text starts with a task
        token itself (then that one is used, never both).
        """
        if not isinstance(seq, str):
            raise TokenizerError(f"expected a string, got {type(seq).__name__}")
        s = self.normalize(seq)
        lead = _TASK_RE.match(s)
        if lead:
            prefix, s = lead.group(0), s[lead.end() :]
        head = [self.task_id(prefix)] if prefix is not None else []
        if "<" in s:
            if not allow_sentinels:
                raise TokenizerError("sentinel tokens are not allowed here")
            ids = self._encode_with_sentinels(s)
        else:
            ids = self._encode_plain(s, 0)
        if add_eos:
            ids = np.append(ids, np.int32(self.eos_id))
        return np.concatenate([np.asarray(head, np.int32), ids]).astype(np.int32)

    def _encode_plain(self, s: str, offset: int) -> np.ndarray:
        try:
            codes = np.frombuffer(s.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError:
            bad = next(i for i, c in enumerate(s) if ord(c) > 127)
            raise TokenizerError(
                f"invalid character {s[bad]!r} at position {offset + bad + 1}"
            ) from None
        ids = self._char[codes]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            if self.unknown_to_unk:
                ids = np.where(ids < 0, self.unk_id, ids)
            else:
                b = int(bad[0])
                raise TokenizerError(
                    f"invalid residue {s[b]!r} at position {offset + b + 1} "
                    f"(allowed: {self.residue_letters}; pass unknown_to_unk=True to map to <unk>)"
                )
        return ids.astype(np.int32)

    def _encode_with_sentinels(self, s: str) -> np.ndarray:
        parts, pos, last = [], 0, 0
        for m in SENTINEL_RE.finditer(s):
            parts.append(self._encode_plain(s[last : m.start()], pos))
            pos += m.start() - last
            parts.append(np.array([self.sentinel_id(int(m.group(1)))], np.int32))
            last = m.end()
        parts.append(self._encode_plain(s[last:], pos))
        return np.concatenate(parts)

    def batch_encode(
        self, seqs: Sequence[str], pad_to: int | None = None, add_eos: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encode and right-pad: returns ``(ids [n, L] int32, attention_mask [n, L] int32)``."""
        enc = [self.encode(s, add_eos=add_eos) for s in seqs]
        longest = max((len(e) for e in enc), default=0)
        length = pad_to if pad_to is not None else longest
        if longest > length:
            raise TokenizerError(f"sequence of {longest} tokens does not fit pad_to={length}")
        return pad_rows(enc, len(enc), length, self.pad_id)

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Ids to text; pad, ``</s>`` and task tokens dropped, sentinels kept as ``<extra_id_N>``."""
        out = []
        skip = {self.pad_id, self.eos_id, *self.task_ids.values()}
        for i in ids:
            i = int(i)
            if skip_special and i in skip:
                continue
            out.append(self.inv.get(i, "<unk>"))
        return "".join(out)


def _norm_keep_sentinels(seq: str) -> str:
    s = seq.translate(_WS)
    pieces, last = [], 0
    for m in SENTINEL_RE.finditer(s):
        pieces.append(s[last : m.start()].upper())
        pieces.append(m.group(0))
        last = m.end()
    pieces.append(s[last:].upper())
    return "".join(pieces)
