"""Hugging Face tokenizer folders read with the ``tokenizers`` library alone, without ``transformers``.

A JAX process needs from a tokenizer only what this file provides: encoding (with offsets, padding and truncation),
decoding, the special tokens, the chat template and saving. ``transformers.AutoTokenizer`` gives the same results
but costs every process its import and first load (~5 s on one idle core of the project's CPU, more under load, as
against ~0.01 s here), and most of the CLI's and the test suite's processes load a tokenizer for a few calls.

``Tokenizer`` keeps the ``transformers`` names and semantics for the subset used here, so the code reads the same
with either object: ``tok(text, add_special_tokens=False)["input_ids"]``, ``tok.pad_token_id``,
``tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``. The chat template is rendered by
Jinja in a sandbox with the environment ``transformers`` uses (``trim_blocks``, ``lstrip_blocks``, loop controls,
``raise_exception``, ``tojson``, ``strftime_now``). ``save_pretrained`` writes ``tokenizer.json``,
``tokenizer_config.json`` and ``chat_template.jinja``, which ``transformers`` loads. ``tests/test_hf_tokenizer.py``
checks every method against ``transformers`` on the bundled tokenizer and on SmolLM2's.
"""

from __future__ import annotations

import copy
import datetime
import functools
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Tokenizer", "is_tokenizer_folder"]

CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
TEMPLATE_FILE = "chat_template.jinja"
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def is_tokenizer_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a fast tokenizer (``tokenizer.json``) this class reads."""
    return (pathlib.Path(path) / TOKENIZER_FILE).is_file()


def _token_text(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or an ``AddedToken`` dict."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value


class Tokenizer:
    """A fast tokenizer (``tokenizers.Tokenizer``) with its ``tokenizer_config.json`` settings."""

    def __init__(self, backend, config: Mapping[str, Any] | None = None, chat_template: str | None = None):
        self._backend = backend
        self._backend.no_padding()  # padding and truncation are done here, per call
        self._backend.no_truncation()
        self.config = dict(config or {})
        self.chat_template = chat_template if chat_template is not None else self.config.get("chat_template")
        if isinstance(self.chat_template, list):  # several named templates: the default one
            self.chat_template = next((t["template"] for t in self.chat_template if t.get("name") == "default"),
                                      None)
        self.padding_side = self.config.get("padding_side", "right")
        self.truncation_side = self.config.get("truncation_side", "right")
        self.model_max_length = int(self.config.get("model_max_length", 10**30))
        self.clean_up_tokenization_spaces = bool(self.config.get("clean_up_tokenization_spaces", False))
        for name in _SPECIAL_NAMES:
            setattr(self, name, _token_text(self.config.get(name)))
        self.extra_special_tokens = [_token_text(t) for t in (self.config.get("extra_special_tokens")
                                                              or self.config.get("additional_special_tokens") or [])]

    @classmethod
    def from_folder(cls, path: str | os.PathLike, **overrides) -> Tokenizer:
        """Read ``tokenizer.json`` (required), ``tokenizer_config.json`` and ``chat_template.jinja`` (optional)
        from ``path``; ``overrides`` replace config settings (e.g. ``padding_side="left"``)."""
        from tokenizers import Tokenizer as Backend

        path = pathlib.Path(path)
        backend = Backend.from_file(str(path / TOKENIZER_FILE))
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")) if (path / CONFIG_FILE).is_file() \
            else {}
        template = (path / TEMPLATE_FILE).read_text(encoding="utf-8") if (path / TEMPLATE_FILE).is_file() else None
        return cls(backend, {**config, **overrides}, template)

    # -- vocabulary -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        if isinstance(tokens, str):
            return self._backend.token_to_id(tokens)
        return [self._backend.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]):
        if isinstance(ids, (int, np.integer)):
            return self._backend.id_to_token(int(ids))
        return [self._backend.id_to_token(int(i)) for i in ids]

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in _SPECIAL_NAMES if getattr(self, name)}
        if self.extra_special_tokens:
            out["additional_special_tokens"] = list(self.extra_special_tokens)
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        named = [getattr(self, n) for n in _SPECIAL_NAMES if getattr(self, n)] + list(self.extra_special_tokens)
        return list(dict.fromkeys(named))

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i in (self._id(t) for t in self.all_special_tokens) if i is not None]

    def add_tokens(self, tokens: Sequence[str]) -> int:
        """Add ``tokens`` not yet in the vocabulary as (non-special) added tokens; returns how many were new,
        appended at the end of the vocabulary in order, as ``transformers`` does."""
        from tokenizers import AddedToken

        new = [t for t in dict.fromkeys(tokens) if self._backend.token_to_id(t) is None]
        return self._backend.add_tokens([AddedToken(t, normalized=True, special=False) for t in new]) if new else 0

    # -- encoding ---------------------------------------------------------------------------------------------
    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 return_offsets_mapping: bool = False, padding: bool | str = False, truncation: bool = False,
                 max_length: int | None = None, return_tensors: str | None = None) -> dict[str, Any]:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        if truncation and max_length is not None:  # the backend keeps room for the special tokens it adds
            self._backend.enable_truncation(max_length, direction=self.truncation_side)
        try:
            encodings = self._backend.encode_batch(texts, add_special_tokens=add_special_tokens) if texts else []
        finally:
            self._backend.no_truncation()
        ids = [list(e.ids) for e in encodings]
        offsets = [list(e.offsets) for e in encodings]
        masks = [[1] * len(x) for x in ids]
        if padding:
            width = max_length if padding == "max_length" else max((len(x) for x in ids), default=0)
            if padding == "max_length" and max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            pad = self.pad_token_id
            if pad is None:
                raise ValueError("this tokenizer has no pad token to pad with")
            ids = [self._pad(x, width, pad) for x in ids]
            masks = [self._pad(m, width, 0) for m in masks]
            offsets = [self._pad(o, width, (0, 0)) for o in offsets]
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": masks}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        if return_tensors == "np":
            return {k: np.asarray(v, np.int64) for k, v in out.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors={return_tensors!r}: only 'np' is supported here")
        return {k: v[0] for k, v in out.items()} if single else out

    def _pad(self, row: list, width: int, value) -> list:
        fill = [value] * (width - len(row))
        return fill + row if self.padding_side == "left" else row + fill

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    # -- decoding ---------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if skip_special_tokens:
            special = set(self.all_special_ids) | self._special_added_ids()
            ids = [i for i in ids if i not in special]
        text = self._backend.decode(ids, skip_special_tokens=False)
        return _clean_up(text) if self.clean_up_tokenization_spaces else text

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    def _special_added_ids(self) -> set[int]:
        return {i for i, t in self._backend.get_added_tokens_decoder().items() if t.special}

    # -- chat -------------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], tokenize: bool = True,
                            add_generation_prompt: bool = False, **kwargs):
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json or chat_template.jinja)")
        text = _compiled(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens_map, **kwargs})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- saving -----------------------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        out = pathlib.Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._backend.save(str(out / TOKENIZER_FILE))
        config = {k: v for k, v in self.config.items() if k != "chat_template"}
        config.update({name: getattr(self, name) for name in _SPECIAL_NAMES if getattr(self, name)},
                      padding_side=self.padding_side, truncation_side=self.truncation_side,
                      clean_up_tokenization_spaces=self.clean_up_tokenization_spaces)
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if self.chat_template:
            (out / TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")

    def __deepcopy__(self, memo):
        clone = Tokenizer(copy.deepcopy(self._backend, memo), self.config, self.chat_template)
        clone.__dict__.update({k: copy.deepcopy(v, memo) for k, v in vars(self).items() if k != "_backend"})
        return clone

    def __repr__(self) -> str:
        return f"Tokenizer(vocab={len(self)}, eos={self.eos_token!r}, pad={self.pad_token!r})"


def _clean_up(text: str) -> str:
    """``transformers``' ``clean_up_tokenization``: no space before punctuation and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
                 (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    """A chat template compiled as ``transformers`` compiles it (sandboxed, same options, filters and globals)."""
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)
