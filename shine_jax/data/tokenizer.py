"""Small byte-level BPE tokenizers for the bundled corpus, in the token conventions SHINE trains with.

SHINE's base models are Qwen3 (byte-level BPE, ChatML). For CPU-sized experiments on the synthetic biographies
a pretrained 150k-token vocabulary is far too large, so :func:`train_bpe_tokenizer` trains a few-thousand-token
byte-level BPE with HF ``tokenizers`` and wraps it as a ``hf_tokenizer.Tokenizer`` (the folder it writes loads in
``transformers`` too) that behaves like SHINE's Qwen tokenizer:

* special tokens, ids 0..5 in this order: ``<|endoftext|>`` (pad, unk), ``<|im_start|>`` (bos: never added
  automatically), ``<|im_end|>`` (eos), and SHINE's ``<RECON>``, ``<COMP>``, ``<NOTHING>``; each is one id and
  is never split or merged with neighbouring text;
* nothing is added around encoded text (no post-processor), ``padding_side="left"``;
* a ChatML chat template with no system prompt that renders exactly SHINE's training format::

      <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n

  and appends ``<|im_start|>assistant\\n`` with ``add_generation_prompt=True``.

Pre-tokenization makes every word carry a leading-space marker wherever it stands: spaces are dropped, runs of
newlines are kept as their own tokens, and GPT-2's byte-level scheme then runs on each piece with a space
prepended. A value therefore has the same token ids in running text, at a paragraph start and as an answer right
after ``assistant\\n`` (with GPT-2's rule, ``" Westerlock"`` and ``"Westerlock"`` are different tokens, so a
small model would have to learn a different token for every copy from the document into an answer; measured: a
from-scratch base then never learns to answer in context within the CPU budget).

Decoding gives the text with single spaces between words (and a leading space): ``decode(encode(text))`` equals
``text`` up to whitespace, which is all that answers and evaluation need.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from shine_jax.data.hf_tokenizer import Tokenizer
from shine_jax.data.prompts import CHAT_TEMPLATE, IM_END, IM_START, SEP, render_qa_turn
from shine_jax.fileutil import atomic_dir

__all__ = [
    "SPECIAL_TOKENS", "PAD_TOKEN", "BOS_TOKEN", "EOS_TOKEN", "SHINE_TOKENS", "CHAT_TEMPLATE", "MIN_VOCAB_SIZE",
    "train_bpe_tokenizer", "tiny_tokenizer", "tiny_tokenizer_dir", "corpus_training_texts", "render_qa_turn",
]

PAD_TOKEN = SEP
BOS_TOKEN = IM_START
EOS_TOKEN = IM_END
SHINE_TOKENS = ("<RECON>", "<COMP>", "<NOTHING>")
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *SHINE_TOKENS)  # ids 0..5 in this order
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # the special tokens and the 256 byte tokens

_META_FILE = "shine_tokenizer.json"  # what a cached tiny tokenizer was trained from
_TRAINER_REVISION = 4  # bump when the training recipe below changes, so cached tokenizers are retrained


_SPECIAL_RE = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


def _without_special_tokens(texts: Iterable[str]) -> Iterator[str]:
    """The pieces of ``texts`` between special tokens.

    ``Tokenizer.train_from_iterator`` does not split special tokens out of the training text (it would learn
    merges such as ``?<|``), while encoding does split them first and pre-tokenizes each piece on its own; feeding
    the pieces separately makes training see exactly what encoding will see.
    """
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}")
        for piece in _SPECIAL_RE.split(text):
            if piece:
                yield piece


def _bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())  # no unk: every byte has a token
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),  # spaces go; words get a marker below
        pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),  # paragraph breaks stay tokens
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),  # " word" for every piece
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..5, excluded from the merge statistics
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, so nothing is ever unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(_without_special_tokens(texts), trainer=trainer)
    return tokenizer


# tokenizer_config.json of a bundled tokenizer (the settings transformers would write for it)
_CONFIG = {
    "backend": "tokenizers", "bos_token": BOS_TOKEN, "clean_up_tokenization_spaces": False, "eos_token": EOS_TOKEN,
    "extra_special_tokens": list(SHINE_TOKENS), "model_max_length": 1000000000000000019884624838656,
    "pad_token": PAD_TOKEN, "padding_side": "left", "tokenizer_class": "TokenizersBackend",
    "truncation_side": "right", "unk_token": PAD_TOKEN,
}


def _wrap(backend) -> Tokenizer:
    from tokenizers import processors

    # adds nothing around a text: the post-processor transformers writes for a tokenizer without one
    backend.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1", special_tokens=[])
    return Tokenizer(backend, _CONFIG, CHAT_TEMPLATE)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike[str]
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``, save it to ``out_dir`` and return it (as loaded back).

    ``vocab_size`` counts everything: the 6 special tokens (ids 0..5), the 256 byte tokens and the merges (fewer
    if ``texts`` do not support that many merges with frequency >= 2). The result is deterministic for the same
    texts in the same order. ``out_dir`` gets ``tokenizer.json``, ``tokenizer_config.json`` and
    ``chat_template.jinja``; ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads it offline as well.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an int >= {MIN_VOCAB_SIZE} (6 special + 256 byte tokens), got {vocab_size!r}"
        )
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be an iterable of strings, not a single string")
    tokenizer = _wrap(_bpe_tokenizer(texts, vocab_size))
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(os.fspath(out_dir))
    return Tokenizer.from_folder(out_dir)


# ---------------------------------------------------------------------------------------------------------------
# A tokenizer for the bundled corpus
# ---------------------------------------------------------------------------------------------------------------


def corpus_training_texts(records: Sequence[Mapping]) -> Iterator[str]:
    """Contexts and chat-rendered QA turns (every answer) of ``records``: what the model will actually read."""
    for record in records:
        yield record["context"]
        for item in record["qa"]:
            for answer in item["answers"]:
                yield render_qa_turn(item["question"], answer)


def _corpus_fingerprint() -> str:
    from shine_jax.data import corpus

    with open(corpus.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _is_cached(out_dir: str, meta: Mapping) -> bool:
    meta_path = os.path.join(out_dir, _META_FILE)
    if not (os.path.isfile(meta_path) and os.path.isfile(os.path.join(out_dir, "tokenizer.json"))):
        return False
    try:
        with open(meta_path, encoding="utf-8") as f:
            return json.load(f) == dict(meta)
    except (OSError, ValueError):
        return False


def tiny_tokenizer_dir(cache_dir: str | os.PathLike[str], vocab_size: int = 2048, seed: int = 0) -> str:
    """Where :func:`tiny_tokenizer` keeps the tokenizer for these settings under ``cache_dir``."""
    return os.path.join(os.fspath(cache_dir), f"shine_bios_bpe{vocab_size}_seed{seed}")


def tiny_tokenizer(
    cache_dir: str | os.PathLike[str], vocab_size: int = 2048, seed: int = 0, num_docs: int = 4000
) -> Tokenizer:
    """A BPE tokenizer trained on the bundled corpus's train split, cached under ``cache_dir`` (see
    :func:`tiny_tokenizer_dir`) and reused when present.

    Training text: the first ``num_docs`` train documents of ``corpus.build_corpus(seed)`` (the same documents as
    the first ``num_docs`` of the tfds ``mqa`` train split) and ``num_docs // 2`` documents about generated people
    (``corpus.fresh_document``, what the base model's reading curriculum reads), their contexts and their
    chat-rendered QA turns, so the chat words and the space-less answer variants are covered. Test people,
    test-only phrasings and the second test family are never seen. A cache built from different settings or a
    different ``corpus.py`` is retrained.
    """
    from shine_jax.data import corpus

    out_dir = tiny_tokenizer_dir(cache_dir, vocab_size, seed)
    meta = {
        "vocab_size": vocab_size, "seed": seed, "num_docs": num_docs, "split": "train",
        "corpus_fingerprint": _corpus_fingerprint(), "trainer_revision": _TRAINER_REVISION,
    }
    if _is_cached(out_dir, meta):
        return Tokenizer.from_folder(out_dir)
    records = corpus.build_corpus(seed, docs_per_split={"train": num_docs, "validation": 0, "test": 0})["train"]
    # and documents about generated people, so the syllables of their names and values become tokens as well
    rng = random.Random(f"{seed}/tokenizer/fresh")
    records += [corpus.fresh_document(rng) for _ in range(num_docs // 2)]
    # Trained into a scratch folder that replaces the cache only when complete (an older cache is kept until then).
    try:
        with atomic_dir(out_dir, overwrite=True) as scratch:
            train_bpe_tokenizer(corpus_training_texts(records), vocab_size, str(scratch))
            with open(os.path.join(scratch, _META_FILE), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
    except OSError:
        if not _is_cached(out_dir, meta):  # fine if a concurrent process just put the same tokenizer there
            raise
    return Tokenizer.from_folder(out_dir)
