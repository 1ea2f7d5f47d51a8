"""Every prompt a model sees, in one place: chat rendering (answer spans labelled for training), the generation
prompt of a conversation, how a document goes before a question (in-context baseline, base pretraining) and the
copy instruction of base pretraining."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = -100
SEP = "<|endoftext|>"  # joins documents into one evidence, as the official pretraining and grouped SQuAD do
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # ChatML's turn markers (the bundled tokenizer's BOS and EOS)

# ChatML without a default system prompt (a system message, if given, is rendered like any other turn): the bundled
# tokenizer's template. The '\n' inside the Jinja string literals are Jinja escapes; whitespace control keeps the
# template itself from emitting anything else. _render_chatml renders the same text without Jinja.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
COPY_PROMPT = "Repeat the text."  # base_pretrain copy examples: this line, the document, then the document again


def encode_text(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def chat_turns(tok, turns: Sequence[tuple[str, str]], system: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels of a chat with ``turns`` = [(user, assistant), ...] in the tokenizer's template.

    An assistant span is labelled from the end of its generation prompt up to the start of the next user turn
    (answer, end-of-turn token, newline), found from the rendered prefixes and the tokenizer's offsets.
    """
    if system is None and getattr(tok, "chat_template", None) == CHAT_TEMPLATE:
        full, spans = _render_chatml(turns)  # the bundled tokenizer's template, without Jinja (~10x faster)
    else:
        full, spans = _render_template(tok, turns, system)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    starts = np.array([a for a, _ in enc["offset_mapping"]], np.int64)
    inside = np.zeros(len(ids), bool)
    for s, e in spans:
        inside |= (starts >= s) & (starts < e)
    return ids, np.where(inside, ids, IGNORE).tolist()


def _render_chatml(turns) -> tuple[str, list[tuple[int, int]]]:
    """What ``CHAT_TEMPLATE`` renders for ``turns``, and each answer's character span."""
    full, spans = "", []
    for user, answer in turns:
        full += f"{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
        start = len(full)
        full += f"{answer}{IM_END}\n"
        spans.append((start, len(full)))
    return full, spans


def render_qa_turn(question: str, answer: str) -> str:
    """One QA exchange in SHINE's training format (what ``CHAT_TEMPLATE`` renders for a user/assistant pair)."""
    return _render_chatml([(question, answer)])[0]


def _render_template(tok, turns, system) -> tuple[str, list[tuple[int, int]]]:
    """The tokenizer's own chat template; each answer span from the rendered prefix before and after it."""
    messages = [{"role": "system", "content": system}] if system else []
    spans, full = [], ""
    for user, answer in turns:
        messages.append({"role": "user", "content": user})
        start = len(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        messages.append({"role": "assistant", "content": answer})
        full = tok.apply_chat_template(messages, tokenize=False)
        spans.append((start, len(full)))
    return full, spans


def generation_text(tok, history: Sequence[dict]) -> str:
    """A conversation (``[{"role", "content"}, ...]``, ending with a user turn) rendered up to the model's turn."""
    return tok.apply_chat_template(list(history), tokenize=False, add_generation_prompt=True)


def generation_prompt(tok, user: str) -> list[int]:
    return encode_text(tok, generation_text(tok, [{"role": "user", "content": user}]))


def icl_user_text(context: str, question: str) -> str:
    """How the in-context baseline (and the base model's pretraining) puts a document before a question."""
    return f"{context}\n\nQuestion: {question}"
