"""Public document-QA datasets -> the project's JSON Lines (``shine-jax data import``).

Each output line is one document and its questions, as ``corpus.read_jsonl`` (what ``eval --data`` loads) reads it::

    {"id": str, "context": str, "qa": [{"question": str, "answers": [str, ...]}, ...]}

Every gold answer a source gives is kept (metrics take the best over them). Texts are stripped, as the official
loaders do (MuLabPKU/SHINE ``utils/mydataset.py``); how each format builds its context follows those loaders and the
data notebooks ``generate_data/ift_data_{pwc,c1qa}.ipynb``; the notes by each converter say where.

A row that does not fit its format is skipped with a warning naming its file and line (row, item); rows a format
leaves out on purpose (unanswerable questions, MS MARCO's "No Answer Present.") are only counted. A file whose first
:data:`PROBE_ROWS` rows all fail is taken to be of another format: one ``InputError`` names the format expected and
the fields seen. The output is written aside and renamed into place at the end.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import random
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

from shine_jax.data import sources
from shine_jax.data.hf_tokenizer import Tokenizer, is_tokenizer_folder
from shine_jax.data.prompts import SEP
from shine_jax.errors import InputError
from shine_jax.fileutil import atomic_text_file

PROBE_ROWS = 20  # a file whose first rows all fail this many times is of another format
NO_ANSWER = "No Answer Present."  # MS MARCO's answer for a query its passages do not answer
# squad-n joins a group's passages with prompts.SEP: the default ``sep`` of the official GroupedSquadDataset, which
# test.py (the paper's SQuAD numbers) uses; the same token shine_jax's pretraining packs texts with
DEFAULT_SEED = 42  # GroupedSquadDataset's default seed


class BadRow(Exception):
    """A row that does not fit its format: the message says why (caught, warned about and counted)."""


@dataclasses.dataclass(frozen=True)
class LeftOut:
    """Yielded by a converter for a question or row it leaves out on purpose; counted by ``reason``."""

    reason: str


# ------------------------------------------------------------------------------------------------ field helpers
def describe(value: Any) -> str:
    return "missing" if value is None else f"a {type(value).__name__}"


def text_of(row: dict, key: str) -> str:
    """``row[key]`` stripped; a missing, non-text or empty value makes the row bad."""
    value = row.get(key)
    if not isinstance(value, str):
        raise BadRow(f"field {key!r} is {describe(value)}, not text")
    if not value.strip():
        raise BadRow(f"field {key!r} is empty")
    return value.strip()


def list_of(row: dict, key: str) -> list:
    value = row.get(key)
    if not isinstance(value, list):
        raise BadRow(f"field {key!r} is {describe(value)}, not a list")
    return value


def clean_answers(values: Iterable[Any]) -> list[str]:
    """Gold answers stripped, empty ones dropped, each once in first-seen order."""
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise BadRow(f"an answer is {describe(value)}, not text")
        if value.strip() and value.strip() not in out:
            out.append(value.strip())
    return out


def qa_item(question: Any, answers: Iterable[Any]) -> dict:
    if not isinstance(question, str) or not question.strip():
        raise BadRow(f"a question is {'empty' if isinstance(question, str) else describe(question)}")
    golds = clean_answers(answers)
    if not golds:
        raise BadRow(f"question {question.strip()[:60]!r} has no answer")
    return {"question": question.strip(), "answers": golds}


def record(rid: Any, context: str, qa: list[dict]) -> dict:
    """An output record; ``rid`` None gets a running number when written."""
    return {"id": None if rid is None else str(rid), "context": context, "qa": qa}


def as_dict(row: Any) -> dict:
    if not isinstance(row, dict):
        raise BadRow(f"expected an object of fields, got {describe(row)}")
    return row


# ------------------------------------------------------------------------------------------------ converters
def from_role_turns(row: Any) -> Iterator[dict | LeftOut]:
    """shine-ift (``ift_pwc.json``): ``{context, conversations: [{role, content}, ...]}`` (plus ``contextlen``,
    ``conversationlen``), user/assistant turns as written by the notebooks' ``conversations_from_qapairs``; each
    user turn and the assistant turn after it become one question (system turns are read past). The official
    IFTDataset packs several items into one evidence at training time; here each item is one document."""
    row = as_dict(row)
    context = text_of(row, "context")
    turns = list_of(row, "conversations")
    qa, question = [], None
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not {"role", "content"} <= turn.keys():
            hint = " ({question, answer} turns are msmarco-mqa)" if isinstance(turn, dict) and "question" in turn else ""
            raise BadRow(f"conversations[{i}] is not a {{role, content}} turn{hint}")
        role, content = turn["role"], turn["content"]
        if not isinstance(content, str):
            raise BadRow(f"conversations[{i}] content is {describe(content)}, not text")
        if role == "user":
            if question is not None:
                raise BadRow(f"conversations[{i}] is a second user turn before an answer")
            question = content
        elif role == "assistant":
            if question is None:
                raise BadRow(f"conversations[{i}] is an assistant turn with no question before it")
            qa.append(qa_item(question, [content]))
            question = None
        elif role != "system":
            raise BadRow(f"conversations[{i}] has the unknown role {role!r}")
    if question is not None:
        raise BadRow("the last user turn has no answer")
    if not qa:
        raise BadRow("'conversations' holds no question and answer")
    yield record(row.get("id"), context, qa)


def from_c1qa(row: Any) -> Iterator[dict | LeftOut]:
    """shine-c1qa (``ift_c1qa.json``): shine-ift's items, one QA each, with the token counts ``contextlen`` and
    ``conversationlen`` that the official IFTC1QADataset filters on (all items are kept here)."""
    row = as_dict(row)
    for key in ("contextlen", "conversationlen"):
        if not isinstance(row.get(key), int):
            raise BadRow(f"field {key!r} is {describe(row.get(key))}, not a number")
    yield from from_role_turns(row)


def from_qa_turns(row: Any) -> Iterator[dict | LeftOut]:
    """msmarco-mqa (``Yewei-Liu/ms_marco_mqa`` train/val.jsonl): ``{id, context, conversations: [{question,
    answer}, ...]}``, read as the official MQADataset and the pwc notebook read it."""
    row = as_dict(row)
    context = text_of(row, "context")
    turns = list_of(row, "conversations")
    qa = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not {"question", "answer"} <= turn.keys():
            hint = " ({role, content} turns are shine-ift)" if isinstance(turn, dict) and "role" in turn else ""
            raise BadRow(f"conversations[{i}] is not a {{question, answer}} pair{hint}")
        qa.append(qa_item(turn["question"], [turn["answer"]]))
    if not qa:
        raise BadRow("'conversations' is empty")
    yield record(row.get("id"), context, qa)


def squad_answer_texts(value: Any) -> list:
    """HF ``answers: {text: [...], answer_start: [...]}`` or the original ``answers: [{text, answer_start}]``."""
    if isinstance(value, dict) and isinstance(value.get("text"), list):
        return value["text"]
    if isinstance(value, list) and all(isinstance(a, dict) and "text" in a for a in value):
        return [a["text"] for a in value]
    raise BadRow(f"field 'answers' is {describe(value)}, not SQuAD's {{text: [...], answer_start: [...]}}")


def from_squad(row: Any) -> Iterator[dict | LeftOut]:
    """squad: a Hugging Face ``rajpurkar/squad`` row ``{id, title, context, question, answers: {text,
    answer_start}}`` (one question; rows of one context are merged into one document afterwards), or an article
    of the original SQuAD JSON ``{title, paragraphs: [{context, qas: [{id, question, answers}]}]}``. A question
    without answers (SQuAD 2.0's unanswerable ones) is left out."""
    row = as_dict(row)
    if "paragraphs" in row and "context" not in row:
        yield from squad_article(row)
        return
    context, question = text_of(row, "context"), text_of(row, "question")
    answers = clean_answers(squad_answer_texts(row.get("answers")))
    if not answers:
        yield LeftOut("SQuAD questions without an answer (SQuAD 2.0 unanswerable)")
        return
    yield record(row.get("id"), context, [qa_item(question, answers)])


def squad_article(article: dict) -> Iterator[dict | LeftOut]:
    for j, paragraph in enumerate(list_of(article, "paragraphs")):
        if not isinstance(paragraph, dict):
            raise BadRow(f"paragraphs[{j}] is {describe(paragraph)}, not an object")
        context, qa, first_id = text_of(paragraph, "context"), [], None
        for question in list_of(paragraph, "qas"):
            answers = clean_answers(squad_answer_texts(as_dict(question).get("answers")))
            if not answers:
                yield LeftOut("SQuAD questions without an answer (SQuAD 2.0 unanswerable)")
                continue
            qa.append(qa_item(question.get("question"), answers))
            first_id = first_id if first_id is not None else question.get("id")
        if qa:
            yield record(first_id, context, qa)


def join_sentences(sentences: Any) -> str:
    """A paragraph from its sentences. HotpotQA's sentences carry their own leading space (the official
    HotpotqaDataset joins them with ""); 2Wiki's may not (its notebook joins with " "): a space is put in only
    where neither side has one, which gives both."""
    if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
        raise BadRow(f"a paragraph's sentences are {describe(sentences)}, not a list of text")
    text = ""
    for sentence in sentences:
        if text and not text[-1].isspace() and not sentence[:1].isspace():
            text += " "
        text += sentence
    return text.strip()


def titled_paragraphs(context: Any) -> list[str]:
    """Paragraph texts of a multi-hop context in any of its published shapes: HF ``{title: [...], sentences:
    [[...]]}``, the original ``[[title, [sentences]], ...]``, or ``[{title, sentences}, ...]`` (``content`` for
    ``sentences`` in some 2Wiki exports). Titles are not put in the text, as in the official loaders."""
    if isinstance(context, dict):
        sentences = context.get("sentences", context.get("content"))
        if isinstance(sentences, list):
            return [join_sentences(s) for s in sentences]
    elif isinstance(context, list):
        out = []
        for item in context:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                out.append(join_sentences(item[1]))
            elif isinstance(item, dict) and ("sentences" in item or "content" in item):
                out.append(join_sentences(item.get("sentences", item.get("content"))))
            else:
                raise BadRow("'context' is not a list of [title, sentences] paragraphs")
        return out
    hint = " (a plain-text context is squad's)" if isinstance(context, str) else ""
    raise BadRow(f"field 'context' is {describe(context)}, not titled paragraphs{hint}")


def from_multihop(row: Any) -> Iterator[dict | LeftOut]:
    """hotpotqa (HF ``hotpotqa/hotpot_qa`` distractor: ``{id, question, answer, type, level, supporting_facts,
    context: {title, sentences}}``) and 2wiki (``framolfese/2WikiMultihopQA`` or the original files: ``_id``,
    ``context: [[title, [sentences]], ...]``): all paragraphs, distractors included, joined by a blank line as the
    official HotpotqaDataset does; supporting facts are not used; the answer is the one gold."""
    row = as_dict(row)
    paragraphs = titled_paragraphs(row.get("context"))
    context = "\n\n".join(p for p in paragraphs if p)
    if not context:
        raise BadRow("field 'context' holds no text")
    qa = [qa_item(row.get("question"), [row.get("answer")])]
    yield record(row.get("id", row.get("_id")), context, qa)


def from_musique(row: Any) -> Iterator[dict | LeftOut]:
    """musique (``musique_{ans,full}_v1.0_*.jsonl``, HF ``dgslibisey/MuSiQue``): ``{id, paragraphs: [{idx, title,
    paragraph_text, is_supporting}], question, question_decomposition, answer, answer_aliases, answerable}``; all
    20 paragraphs' texts joined by a blank line, golds = answer + aliases (official MusiqueDataset). The full
    version's unanswerable questions (``answerable: false``) are left out."""
    row = as_dict(row)
    texts = []
    for j, paragraph in enumerate(list_of(row, "paragraphs")):
        if not isinstance(paragraph, dict) or not isinstance(paragraph.get("paragraph_text"), str):
            raise BadRow(f"paragraphs[{j}] has no text 'paragraph_text'")
        texts.append(paragraph["paragraph_text"].strip())
    if row.get("answerable") is False:
        yield LeftOut("MuSiQue questions marked unanswerable")
        return
    context = "\n\n".join(t for t in texts if t)
    if not context:
        raise BadRow("field 'paragraphs' holds no text")
    aliases = row.get("answer_aliases") or []
    if not isinstance(aliases, list):
        raise BadRow(f"field 'answer_aliases' is {describe(aliases)}, not a list")
    yield record(row.get("id"), context, [qa_item(row.get("question"), [row.get("answer"), *aliases])])


def passage_table(passages: Any) -> list[tuple[Any, Any]]:
    """``(is_selected, passage_text)`` pairs from HF's ``{is_selected: [...], passage_text: [...], url: [...]}``
    (a sequence of structs, stored by column) or a list of passage objects (the original files)."""
    if isinstance(passages, dict) and isinstance(passages.get("passage_text"), list):
        return list(zip(passages.get("is_selected") or [0] * len(passages["passage_text"]), passages["passage_text"]))
    if isinstance(passages, list) and all(isinstance(p, dict) and "passage_text" in p for p in passages):
        return [(p.get("is_selected", 0), p["passage_text"]) for p in passages]
    raise BadRow(f"field 'passages' is {describe(passages)}, not MS MARCO's passages")


def from_msmarco(row: Any) -> Iterator[dict | LeftOut]:
    """msmarco (HF ``microsoft/ms_marco`` v1.1/v2.1: ``{answers, passages: {is_selected, passage_text, url},
    query, query_id, query_type, wellFormedAnswers}``): every passage joined by a blank line, golds = ``answers``.
    As the official MsmarcoDataset, a query with no selected passage or no answer is left out, and so is the
    answer "No Answer Present."; ``wellFormedAnswers`` are not used (the official evaluation scores against
    ``answers`` only)."""
    row = as_dict(row)
    query = text_of(row, "query")
    table = passage_table(row.get("passages"))
    if not all(isinstance(text, str) for _, text in table):
        raise BadRow("a passage_text is not text")
    answers = [a for a in clean_answers(list_of(row, "answers")) if a != NO_ANSWER]
    if not answers or not any(selected for selected, _ in table):
        yield LeftOut("MS MARCO queries without an answer (no selected passage or 'No Answer Present.')")
        return
    context = "\n\n".join(text.strip() for _, text in table if text.strip())
    if not context:
        raise BadRow("field 'passages' holds no text")
    yield record(row.get("query_id"), context, [qa_item(query, answers)])


# ------------------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class Format:
    convert: Callable[[Any], Iterator[dict | LeftOut]]
    fields: str  # the source fields, for --help and the wrong-format error
    grouped: bool = False  # questions of one context are merged into one document
    padded: bool = False  # squad-n: documents padded with other documents into groups of --pad-tokens


SQUAD_FIELDS = "id, title, context, question, answers {text, answer_start} (or the original {data: [articles]})"
FORMATS: dict[str, Format] = {
    "shine-ift": Format(from_role_turns, "context, conversations [{role, content}]"),
    "shine-c1qa": Format(from_c1qa, "context, conversations [{role, content}], contextlen, conversationlen"),
    "msmarco-mqa": Format(from_qa_turns, "context, conversations [{question, answer}]"),
    "squad": Format(from_squad, SQUAD_FIELDS, grouped=True),
    "squad-n": Format(from_squad, SQUAD_FIELDS, grouped=True, padded=True),
    "hotpotqa": Format(from_multihop, "id, question, answer, context {title, sentences}"),
    "musique": Format(from_musique, "id, paragraphs [{title, paragraph_text, is_supporting}], question, answer, "
                                    "answer_aliases, answerable"),
    "2wiki": Format(from_multihop, "_id, question, answer, context [[title, [sentences]]] or {title, sentences}"),
    "msmarco": Format(from_msmarco, "query, query_id, passages {is_selected, passage_text, url}, answers, "
                                    "wellFormedAnswers"),
}

# the fields that give a row's format away, most specific first (for the wrong-format error)
SIGNATURES = [
    ({"paragraphs", "question", "answer"}, ("musique",)),
    ({"query", "passages", "answers"}, ("msmarco",)),
    ({"context", "question", "answers"}, ("squad", "squad-n")),
    ({"title", "paragraphs"}, ("squad", "squad-n")),  # an article of the original SQuAD JSON
    ({"context", "conversations", "contextlen"}, ("shine-ift", "shine-c1qa")),
    ({"context", "conversations"}, ("shine-ift", "msmarco-mqa")),
    ({"context", "question", "answer"}, ("hotpotqa", "2wiki")),
]


def guess_formats(row: Any) -> tuple[str, ...]:
    """The formats whose fields ``row`` has (none if it is not an object)."""
    if isinstance(row, dict):
        return next((names for keys, names in SIGNATURES if keys <= row.keys()), ())
    return ()


# ------------------------------------------------------------------------------------------------ squad-n
def whitespace_count(text: str) -> int:
    """Words, the length measure without --tokenizer; the squad-n separator counts as one (one token in Qwen's
    tokenizer) even where no space surrounds it."""
    return len(text.replace(SEP, f" {SEP} ").split())


def load_token_counter(tokenizer_dir: str | None) -> Callable[[str], int]:
    """Tokens of a text by the HF tokenizer in ``tokenizer_dir`` (local files only), else whitespace words."""
    if tokenizer_dir is None:
        return whitespace_count
    if not pathlib.Path(tokenizer_dir).is_dir():
        raise InputError(f"--tokenizer {tokenizer_dir}: no such folder (an HF tokenizer folder is expected)")
    if is_tokenizer_folder(tokenizer_dir):
        tok = Tokenizer.from_folder(tokenizer_dir)
    else:
        from transformers import AutoTokenizer  # heavy; only a folder without tokenizer.json needs it

        tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        tok.model_max_length = sys.maxsize  # whole groups are counted: no "longer than the maximum" warning
    return lambda text: len(tok(text)["input_ids"])


def array_split(items: list, parts: int) -> list[list]:
    """``numpy.array_split`` on a list: ``parts`` consecutive slices, the first ``len % parts`` one longer."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


def pad_with_distractors(documents: list[dict], pad_tokens: int, count: Callable[[str], int], seed: int,
                         notes: list[str]) -> Iterator[dict]:
    """squad-n, the official grouped-SQuAD rule (MuLabPKU/SHINE ``utils/mydataset.py``,
    ``GroupedSquadDataset.shuffle`` and ``__getitem__``; test.py builds its ``squad_{context_avg_len}`` sets so):
    the distinct contexts, in first-seen order, are counted as one text joined by the separator, split into
    ``ceil(tokens / pad_tokens)`` groups (``random.seed(seed)``, ``random.shuffle``, ``np.array_split``), so a
    group holds ``pad_tokens`` tokens on average (not at least: the paper's "context_avg_len"); each question's
    evidence is its group's contexts in a fresh random order (``random.sample``), its own context whole among the
    others. Here each context's questions share one document, whose order is drawn once, per context in group
    order, from the same generator: deterministic given ``seed``."""
    contexts = [d["context"] for d in documents]
    by_context = {d["context"]: d for d in documents}
    num_groups = max(1, -(-count(SEP.join(contexts)) // pad_tokens))
    rng = random.Random(seed)  # the official random.seed(seed) then random.shuffle / random.sample: same draws
    rng.shuffle(contexts)
    groups = [g for g in array_split(contexts, num_groups) if g]  # more groups than contexts: empty ones go
    sizes = []
    for group in groups:
        sizes.append(count(SEP.join(group)))
        for gold in group:
            order = rng.sample(group, len(group))
            doc = by_context[gold]
            yield record(f"{doc['id']}-n{pad_tokens}" if doc["id"] else None, SEP.join(order), doc["qa"])
    if sizes:
        notes.append(f"squad-n: {len(contexts)} contexts in {len(groups)} groups of {pad_tokens} tokens on average "
                     f"(measured: mean {sum(sizes) / len(sizes):.0f}, min {min(sizes)}, max {max(sizes)})")


def group_by_context(items: Iterable[dict]) -> list[dict]:
    """Questions of one context merged into one document, in first-seen order. All groups are held until the end
    so that a context seen again later (not only in the next row: HF SQuAD is sorted by title, not guaranteed by
    context) is merged too; this holds the dataset's text, which SQuAD's size (~40 MB) allows, and squad-n needs
    every context anyway. The streaming formats (one row, one document) hold one row at a time."""
    groups: dict[str, dict] = {}
    for item in items:
        doc = groups.get(item["context"])
        if doc is None:
            groups[item["context"]] = dict(item, qa=list(item["qa"]))
        else:
            doc["qa"].extend(q for q in item["qa"] if q not in doc["qa"])
    return list(groups.values())


# ------------------------------------------------------------------------------------------------ reading
@dataclasses.dataclass
class ImportSummary:
    out: str
    rows: int = 0
    records: int = 0
    questions: int = 0
    bad_rows: int = 0
    left_out: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    notes: list[str] = dataclasses.field(default_factory=list)

    def report(self) -> str:
        lines = [f"wrote {self.out}: {self.records} documents, {self.questions} questions from {self.rows} rows",
                 f"skipped {self.bad_rows} bad rows (warnings above)" if self.bad_rows else "skipped 0 bad rows"]
        lines += [f"left out {n} {reason}" for reason, n in sorted(self.left_out.items())]
        return "\n".join(lines + self.notes)


def print_warning(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)  # above a running progress bar, not through it


def wrong_format(path: pathlib.Path, name: str, tried: list[tuple[str, Any, str]], whole: bool) -> InputError:
    where, row, problem = tried[0]
    if isinstance(row, dict):
        seen = f"fields {', '.join(sorted(row))}"
    else:
        seen = "no decodable line" if isinstance(row, sources.BadLine) else describe(row).removeprefix("a ")
    guess = guess_formats(row)
    hint = f"; it looks like {' or '.join(guess)}" if guess and name not in guess else ""
    which = f"all {len(tried)} of its rows" if whole else f"its first {len(tried)} rows"
    return InputError(f"{path} is not {name} input: {which} fail ({where}: {problem}); "
                      f"{name} rows have {FORMATS[name].fields}, these have {seen}{hint}")


def convert_file(path: pathlib.Path, name: str, summary: ImportSummary, warn: Callable[[str], None],
                 progress: bool) -> Iterator[dict]:
    """The documents of one file's rows, with a progress bar."""
    bar = tqdm(sources.iter_rows(path), desc=path.name, unit=" rows", total=sources.row_count(path),
               disable=None if progress else True,  # None: only on a terminal, never into a log
               file=sys.stderr, leave=False, dynamic_ncols=True)
    with bar:
        yield from convert_rows(bar, path, name, summary, warn)


def convert_rows(rows: Iterable[tuple[str, Any]], path: pathlib.Path, name: str, summary: ImportSummary,
                 warn: Callable[[str], None]) -> Iterator[dict]:
    """Documents of ``rows`` (one file's). Until a row converts, failures are held back: if the first
    :data:`PROBE_ROWS` rows (or all, if fewer) fail, the file is of another format and one error says so."""
    convert = FORMATS[name].convert
    held: list[tuple[str, Any, str]] | None = []  # None once a row has converted
    for where, row in rows:
        summary.rows += 1
        try:
            if isinstance(row, sources.BadLine):
                raise BadRow(row.problem)
            items = list(convert(row))  # whole before any is used: a bad row contributes nothing
        except BadRow as e:
            if held is None:
                summary.bad_rows += 1
                warn(f"{where}: {e}; skipping the row")
                continue
            held.append((where, row, str(e)))
            if len(held) >= PROBE_ROWS:
                raise wrong_format(path, name, held, whole=False) from None
            continue
        if held:  # the file is of this format after all: the held rows were bad ones
            for where_held, _, problem in held:
                summary.bad_rows += 1
                warn(f"{where_held}: {problem}; skipping the row")
        held = None
        for item in items:
            if isinstance(item, LeftOut):
                summary.left_out[item.reason] += 1
            else:
                yield item
    if held:
        raise wrong_format(path, name, held, whole=True)
    if held is not None:
        raise InputError(f"{path} holds no rows")


def import_files(name: str, inputs: Sequence[str], out: str | os.PathLike, *, tokenizer: str | None = None,
                 pad_tokens: int | None = None, seed: int = DEFAULT_SEED, progress: bool = True,
                 warn: Callable[[str], None] = print_warning) -> ImportSummary:
    """Convert ``inputs`` (paths or globs) of format ``name`` into the JSON Lines file ``out``."""
    if name not in FORMATS:
        raise InputError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
    spec = FORMATS[name]
    if spec.padded and (pad_tokens is None or pad_tokens < 1):
        raise InputError(f"--format {name} needs --pad-tokens N >= 1 (the average document length, e.g. 1024)")
    if not spec.padded and (pad_tokens is not None or tokenizer is not None):
        raise InputError("--pad-tokens and --tokenizer only apply to --format squad-n")
    paths = sources.expand_inputs(inputs)
    count = load_token_counter(tokenizer) if spec.padded else whitespace_count
    out = pathlib.Path(out)
    summary = ImportSummary(str(out))
    items: Iterable[dict] = (doc for path in paths for doc in convert_file(path, name, summary, warn, progress))
    if spec.grouped:
        items = group_by_context(items)
    if spec.padded:
        items = pad_with_distractors(list(items), pad_tokens, count, seed, summary.notes)
    with atomic_text_file(out) as f:
        for doc in items:
            summary.records += 1
            summary.questions += len(doc["qa"])
            doc["id"] = doc["id"] or f"{name}-{summary.records:07d}"
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        if not summary.records:
            raise InputError(f"no document to write: every row of {', '.join(map(str, paths))} was skipped or "
                             f"left out")
    return summary
