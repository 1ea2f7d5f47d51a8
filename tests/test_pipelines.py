"""The Grain stage pipelines: labels only on answers, RECON/COMP, packing, distractors, determinism, sharding."""

import numpy as np
import pytest

from shine_jax.data import corpus, pipelines, prompts
from shine_jax.data.tokenizer import tiny_tokenizer
from tests.conftest import ws
from tests.train_utils import small_config

# configs/tiny.py trains its base on generated people with copy examples; these tests read the bundled records
BUNDLED = ["data.lm_fresh_share=0.0", "data.lm_copy_share=0.0", "data.lm_copy_warmup=0.0"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=512, num_docs=300)


@pytest.fixture(scope="module")
def records():
    return corpus.build_corpus(0, num_people=300, docs_per_split={"train": 40, "validation": 0, "test": 0})["train"]


def visible(tok, ids, mask):
    return ws(tok.decode([int(i) for i, m in zip(ids, mask) if m]))


def answers_of(tok, labels):
    return [ws(t) for t in tok.decode([int(i) for i in labels if i != -100]).split("<|im_end|>") if ws(t)]


def test_chat_labels_cover_only_answers(tok):
    ids, labels = prompts.chat_turns(tok, [("Where was Ada born?", "Dunmere"), ("Her job?", "florist")])
    labelled = tok.decode([i for i, l in zip(ids, labels) if l != -100])
    assert ws(labelled) == "Dunmere <|im_end|> florist <|im_end|>"
    assert labelled.count("\n") == 2  # the end-of-turn newline is labelled too
    assert ws(tok.decode(ids)) == ws("<|im_start|>user\nWhere was Ada born?<|im_end|>\n<|im_start|>assistant\nDunmere"
                                     "<|im_end|>\n<|im_start|>user\nHer job?<|im_end|>\n<|im_start|>assistant\n"
                                     "florist<|im_end|>\n")


def test_ift_examples(tok, records):
    cfg = small_config("ift_mqa", extra=["data.context_length=400", "data.conversation_length=400"]).data
    ds = pipelines.stage_dataset("ift_mqa", records, tok, cfg, seed=0, repeat=False)
    ex = ds[0]
    rec = next(r for r in records if visible(tok, ex["evidence_ids"], ex["evidence_mask"]) == ws(r["context"]))
    answers = answers_of(tok, ex["labels"])
    gold = [qa["answers"][0] for qa in rec["qa"]]
    # a long conversation is cut at its end, possibly inside an answer
    assert len(answers) >= 5 and answers[:-1] == gold[: len(answers) - 1]
    assert gold[len(answers) - 1].startswith(answers[-1])
    assert ex["input_ids"].shape == (400,) and ex["evidence_ids"].shape == (400,)
    assert ex["evidence_mask"][0] == 0 and ex["evidence_mask"][-1] == 1  # left padded
    single = pipelines.stage_dataset("ift_1qa", records, tok, cfg, seed=0, repeat=False)
    assert len(single) == sum(len(r["qa"]) for r in records)
    assert visible(tok, single[0]["labels"], single[0]["labels"] != -100).count("<|im_end|>") == 1


def test_ift_fresh_documents_replace_training_documents_only(tok, records):
    """data.ift_fresh_share=1: every multi-QA training document is about generated people (names of no record,
    1..ift_fresh_max_people of them, every answer stated in the evidence); validation keeps the records."""
    cfg = small_config("ift_mqa", extra=["data.context_length=900", "data.conversation_length=700",
                                         "data.ift_fresh_share=1.0", "data.ift_fresh_max_people=1"]).data
    known = {name for r in records for name in corpus.find_full_names(r["context"])}
    train = pipelines.stage_dataset("ift_mqa", records, tok, cfg, seed=0)
    for i in range(6):
        ex = train[i]
        evidence = visible(tok, ex["evidence_ids"], ex["evidence_mask"])
        assert "\n\n" not in evidence.strip() and evidence not in {ws(r["context"]) for r in records}
        assert not known & set(corpus.find_full_names(evidence))  # nobody of the records
        answers = answers_of(tok, ex["labels"])
        assert answers and all(a in evidence for a in answers[:-1])  # the last may be cut at the length
    val = pipelines.stage_dataset("ift_mqa", records, tok, cfg, seed=0, repeat=False)
    assert {visible(tok, val[i]["evidence_ids"], val[i]["evidence_mask"]) for i in range(len(val))} \
        == {ws(r["context"]) for r in records}
    single = pipelines.stage_dataset("ift_1qa", records, tok, cfg, seed=0)  # multi-QA only
    assert visible(tok, single[0]["evidence_ids"], single[0]["evidence_mask"]) in {ws(r["context"]) for r in records}
    for field, value in (("ift_fresh_share", "1.5"), ("ift_fresh_max_people", "5")):
        with pytest.raises(Exception, match=f"data.{field}"):
            small_config("ift_mqa", extra=[f"data.{field}={value}"])


def test_distractors_lengthen_the_evidence_only(tok, records):
    cfg = small_config("ift_mqa", extra=["data.context_length=900", "data.conversation_length=400",
                                         "data.distractors=2"]).data
    pool = [r["context"] for r in records]
    with_d = pipelines.stage_dataset("ift_mqa", records, tok, cfg, 0, distractor_pool=pool, repeat=False)[3]
    plain_cfg = small_config("ift_mqa", extra=["data.context_length=900", "data.conversation_length=400"]).data
    plain = pipelines.stage_dataset("ift_mqa", records, tok, plain_cfg, 0, repeat=False)[3]
    assert with_d["evidence_mask"].sum() > plain["evidence_mask"].sum()
    np.testing.assert_array_equal(with_d["labels"], plain["labels"])


def test_pretrain_recon_and_comp(tok, records):
    cfg = small_config("pretrain", extra=["data.context_length=600", "data.conversation_length=700"]).data
    ds = pipelines.stage_dataset("pretrain", records, tok, cfg, seed=3, repeat=False)
    kinds = {"<RECON>": 0, "<COMP>": 0}
    for i in range(len(ds)):
        ex = ds[i]
        evidence = visible(tok, ex["evidence_ids"], ex["evidence_mask"])
        conv = tok.decode(ex["input_ids"][ex["attention_mask"] == 1].tolist())
        answer = tok.decode([t for t in ex["labels"] if t != -100]).split("<|im_end|>")[0]
        kind = "<RECON>" if "<RECON>" in conv else "<COMP>"
        kinds[kind] += 1
        truncated = bool(ex["evidence_mask"].all())  # a text longer than the evidence length is cut, as officially
        # COMP splits on whitespace and re-joins with single spaces (the official split_text), so compare words
        evidence, answer = ws(evidence), ws(answer)
        assert answer.startswith(evidence)
        if kind == "<RECON>" and not truncated:
            assert answer == evidence
        elif not truncated:  # COMP: the evidence is a 70-90 % word prefix of the answer (the full text)
            assert 0.65 <= len(evidence.split()) / len(answer.split()) <= 0.95
    assert kinds["<RECON>"] > 0 and kinds["<COMP>"] > 0
    packed = [visible(tok, ds[i]["evidence_ids"], ds[i]["evidence_mask"]).count("<|endoftext|>") for i in range(len(ds))]
    assert max(packed) >= 1  # several texts joined into one evidence


def test_pack_groups():
    assert pipelines.pack_groups([50, 40, 100, 10, 10], 100) == [[0, 1], [2], [3, 4]]


def test_determinism_and_process_sharding(tok, records):
    cfg = small_config("base_pretrain", extra=BUNDLED).data
    a = pipelines.stage_dataset("base_pretrain", records, tok, cfg, seed=1)
    b = pipelines.stage_dataset("base_pretrain", records, tok, cfg, seed=1)
    c = pipelines.stage_dataset("base_pretrain", records, tok, cfg, seed=2)
    for i in range(5):
        np.testing.assert_array_equal(a[i]["input_ids"], b[i]["input_ids"])
    assert any(not np.array_equal(a[i]["input_ids"], c[i]["input_ids"]) for i in range(5))
    # two hosts see disjoint halves of the records
    h0 = pipelines.stage_dataset("ift_mqa", records, tok, small_config("ift_mqa").data, 0, shard_index=0,
                                 shard_count=2, repeat=False)
    h1 = pipelines.stage_dataset("ift_mqa", records, tok, small_config("ift_mqa").data, 0, shard_index=1,
                                 shard_count=2, repeat=False)
    assert len(h0) + len(h1) == len(records)
    e0 = {visible(tok, h0[i]["evidence_ids"], h0[i]["evidence_mask"]) for i in range(len(h0))}
    e1 = {visible(tok, h1[i]["evidence_ids"], h1[i]["evidence_mask"]) for i in range(len(h1))}
    assert not e0 & e1


def test_base_pretrain_in_context_examples(tok, records):
    """In-context QA keeps the whole document, asks as many questions as fit, and (optionally) scores answers only."""
    cfg = small_config("base_pretrain", extra=[*BUNDLED, "data.lm_mix=(0.0, 0.0, 1.0)", "data.lm_questions=0",
                                                "data.lm_fact_share=0.0", "data.lm_answer_loss=True",
                                                "data.lm_length=384"]).data
    rng = np.random.default_rng(0)
    intact = 0
    for rec in records[:8]:
        ex = pipelines.lm_example(rec, rng, tok, cfg)
        text = visible(tok, ex["input_ids"], ex["attention_mask"])
        one_question = max(len(prompts.chat_turns(tok, [(prompts.icl_user_text(rec["context"], q), a)])[0])
                           for q, a in pipelines.qa_turns(rec))
        if one_question <= cfg.lm_length:
            assert ws(rec["context"]) in text  # the document is never cut when it fits with any one question
            intact += 1
        asked = [qa for qa in rec["qa"] if ws(qa["question"]) in text]
        assert len(asked) >= 1
        labelled = answers_of(tok, ex["labels"])
        assert labelled == [next(qa["answers"][0] for qa in rec["qa"] if qa["question"] == q)
                            for q in _questions_in_order(text, asked)]
    assert intact >= 3
    # "all that fit": some document gets more than the default 4 questions
    counts = [sum(ws(qa["question"]) in visible(tok, *(lambda e: (e["input_ids"], e["attention_mask"]))(
        pipelines.lm_example(r, rng, tok, cfg))) for qa in r["qa"]) for r in records[:8]]
    assert max(counts) > 4


def _questions_in_order(text, asked):
    return [qa["question"] for qa in sorted(asked, key=lambda qa: text.index(ws(qa["question"])))]


def test_base_pretrain_fact_examples(tok, records):
    """lm_fact_share=1: the prompt holds only the sentence stating the answer, and one question is asked."""
    cfg = small_config("base_pretrain", extra=[*BUNDLED, "data.lm_mix=(0.0, 0.0, 1.0)", "data.lm_fact_share=1.0",
                                                "data.lm_answer_loss=True"]).data
    rng = np.random.default_rng(0)
    for rec in records[:8]:
        ex = pipelines.lm_example(rec, rng, tok, cfg)
        (answer,) = answers_of(tok, ex["labels"])
        prompt = visible(tok, ex["input_ids"], ex["attention_mask"]).split("Question:")[0]
        assert answer in prompt and len(prompt) < len(ws(rec["context"])) / 2


def test_base_pretrain_person_examples(tok, records):
    """lm_person_share=1: the prompt holds only the asked person's paragraph, and only their questions follow."""
    cfg = small_config("base_pretrain", extra=[*BUNDLED, "data.lm_mix=(0.0, 0.0, 1.0)", "data.lm_fact_share=0.0",
                                                "data.lm_person_share=1.0", "data.lm_answer_loss=True",
                                                "data.lm_length=384"]).data
    rng = np.random.default_rng(0)
    several = 0
    for rec in [r for r in records if "\n\n" in r["context"]][:8]:
        ex = pipelines.lm_example(rec, rng, tok, cfg)
        text = visible(tok, ex["input_ids"], ex["attention_mask"])
        prompt = text.split("Question:")[0]
        paragraphs = [ws(p) for p in rec["context"].split("\n\n")]
        (paragraph,) = [p for p in paragraphs if p in prompt]  # exactly one person's bio
        answers = answers_of(tok, ex["labels"])
        assert answers and all(a in paragraph for a in answers)
        several += len(answers) > 1
    assert several >= 2
    with pytest.raises(Exception, match="lm_person_share"):
        small_config("base_pretrain", extra=[*BUNDLED, "data.lm_fact_share=0.7", "data.lm_person_share=0.5"])


def test_packed_base_pretrain_rows(tok, records):
    """lm_pack: a training row holds several whole examples back to back (first fit), far less padding than one
    example per row, labels aligned with their own example; validation rows stay one example each."""
    extra = [*BUNDLED, "data.lm_mix=(0.0, 0.0, 1.0)", "data.lm_fact_share=0.7", "data.lm_answer_loss=True",
             "data.lm_length=192", "data.lm_questions=0"]
    packed_cfg = small_config("base_pretrain", extra=extra + ["data.lm_pack=True"]).data
    single_cfg = small_config("base_pretrain", extra=extra).data
    train = pipelines.stage_dataset("base_pretrain", records, tok, packed_cfg, seed=0)
    rows = [train[i] for i in range(8)]
    singles = [pipelines.lm_example(r, np.random.default_rng(i), tok, single_cfg) for i, r in enumerate(records[:24])]
    fill = lambda exs: np.mean([e["attention_mask"].sum() for e in exs])  # noqa: E731
    assert fill(rows) > 1.3 * fill(singles) and fill(rows) <= 192
    turn_counts = []
    for row in rows:
        text = visible(tok, row["input_ids"], row["attention_mask"])
        turns = text.count("<|im_start|> assistant")
        turn_counts.append(turns)
        # every labelled answer is the answer to a question asked in the same row, in order
        labelled = answers_of(tok, row["labels"])
        assert len(labelled) == turns
        asked = [(ws(qa["question"]), qa["answers"][0]) for r in records for qa in r["qa"]]
        for answer, chunk in zip(labelled, text.split("<|im_start|> assistant")[:-1]):
            question = chunk.rsplit("<|im_start|> user", 1)[-1]
            assert any(q in question and a == answer for q, a in asked)
    assert np.mean(turn_counts) >= 2  # several examples share a row (a long document may fill one alone)
    assert np.array_equal(train[3]["input_ids"], pipelines.stage_dataset("base_pretrain", records, tok, packed_cfg,
                                                                         seed=0)[3]["input_ids"])  # deterministic
    val = pipelines.stage_dataset("base_pretrain", records, tok, packed_cfg, seed=0, repeat=False)
    assert len(val) == len(records)  # one example per validation row: val loss stays comparable


def test_base_pretrain_fresh_people(tok, records):
    """lm_fresh_share=1: every example is about generated people, whose names occur in no training record; the
    answers are stated in the prompt (they can only be read); the people count follows lm_fresh_max_people."""
    cfg = small_config("base_pretrain", extra=[*BUNDLED, "data.lm_mix=(0.0, 0.0, 1.0)", "data.lm_fresh_share=1.0",
                                                "data.lm_fact_share=0.0", "data.lm_person_share=0.0",
                                                "data.lm_fresh_max_people=1", "data.lm_answer_loss=True",
                                                "data.lm_length=384"]).data
    rng = np.random.default_rng(0)
    known = {w for r in records for w in r["context"].split()}
    for rec in records[:6]:
        ex = pipelines.lm_example(rec, rng, tok, cfg)
        prompt = visible(tok, ex["input_ids"], ex["attention_mask"]).split("Question:")[0]
        assert ws(rec["context"]) not in prompt
        assert "\n\n" not in prompt.strip()  # one person
        answers = answers_of(tok, ex["labels"])
        assert answers and all(a in prompt for a in answers)
        name = prompt.split()[2:4]  # after "<|im_start|> user"
        assert set(name).isdisjoint(known)
    with pytest.raises(Exception, match="lm_fresh_share"):
        small_config("base_pretrain", extra=[*BUNDLED, "data.lm_fresh_share=1.5"])


def test_base_pretrain_broad_documents(tok, records):
    """lm_broad_share=1: every example is a broad document (names of no training record, every answer in the
    prompt); a share outside [0, 1] is refused naming the field."""
    cfg = small_config("base_pretrain", extra=[*BUNDLED, "data.lm_mix=(0.0, 0.0, 1.0)", "data.lm_broad_share=1.0",
                                                "data.lm_fact_share=0.0", "data.lm_person_share=0.0",
                                                "data.lm_fresh_max_people=1", "data.lm_answer_loss=True",
                                                "data.lm_length=384"]).data
    rng = np.random.default_rng(0)
    for rec in records[:6]:
        ex = pipelines.lm_example(rec, rng, tok, cfg)
        prompt = visible(tok, ex["input_ids"], ex["attention_mask"]).split("Question:")[0]
        answers = answers_of(tok, ex["labels"])
        assert answers and all(a in prompt for a in answers)
        assert set(prompt.replace("'s", " ").split()).isdisjoint(corpus.FIRST_NAMES)
    with pytest.raises(Exception, match="lm_broad_share"):
        small_config("base_pretrain", extra=[*BUNDLED, "data.lm_broad_share=-0.1"])


def test_chatml_fast_path_equals_the_template(tok):
    """The bundled tokenizer's chat is rendered without Jinja; it must equal what its template renders."""
    turns = [("Where was Ada born?", "Dunmere"), ("Her job?", "florist"), ("And?", "x y")]
    assert prompts._render_chatml(turns) == prompts._render_template(tok, turns, None)


def test_base_pretrain_copy_examples(tok, records):
    """lm_copy_share=1: the prompt asks for one person's bio back, and the labels are exactly that bio."""
    cfg = small_config("base_pretrain", extra=[*BUNDLED, "data.lm_mix=(0.0, 0.0, 1.0)", "data.lm_copy_share=1.0",
                                                "data.lm_length=384"]).data
    rng = np.random.default_rng(0)
    for rec in records[:4]:
        ex = pipelines.lm_example(rec, rng, tok, cfg)
        prompt = visible(tok, ex["input_ids"], ex["attention_mask"])
        (answer,) = answers_of(tok, ex["labels"])
        assert prompts.COPY_PROMPT in prompt and answer == ws(rec["context"].split("\n\n")[0])


def test_copy_warmup_rows_then_the_curriculum(tok, records):
    """lm_copy_warmup: the first rows of the base-pretraining stream are synthetic copying (random token
    spans, a separator, the same span labelled), deterministic per row index; later rows are the usual ones."""
    cfg = small_config("base_pretrain", extra=[*BUNDLED, "data.lm_pack=True", "data.lm_length=128",
                                                "data.lm_copy_warmup=0.5"]).data
    ds = pipelines.stage_dataset("base_pretrain", records, tok, cfg, seed=0, copy_warmup_rows=2)
    again = pipelines.stage_dataset("base_pretrain", records, tok, cfg, seed=0, copy_warmup_rows=2)
    for i in range(2):
        row = ds[i]
        assert np.array_equal(row["input_ids"], again[i]["input_ids"])
        real = row["attention_mask"] == 1
        ids, labels = row["input_ids"][real].tolist(), row["labels"][real].tolist()
        runs, j = 0, 0
        while j < len(ids):  # every labelled run repeats the span right before the separator that precedes it
            if labels[j] == -100:
                j += 1
                continue
            k = j
            while k < len(ids) and labels[k] != -100:
                k += 1
            n = k - j
            assert ids[j - 1] == tok.eos_token_id and ids[j - 1 - n:j - 1] == ids[j:k] and n >= 8
            runs, j = runs + 1, k
        assert runs >= 2 and sum(t != -100 for t in labels) > 0.4 * len(ids)
    text = visible(tok, ds[2]["input_ids"], ds[2]["attention_mask"])
    assert "<|im_start|> assistant" in text or "<|im_end|>" in text  # the curriculum after the warm-up rows
    with pytest.raises(Exception, match="lm_copy_warmup"):
        small_config("base_pretrain", extra=[*BUNDLED, "data.lm_copy_warmup=0.5", "data.lm_pack=False"])
    with pytest.raises(Exception, match="lm_copy_warmup"):
        small_config("base_pretrain", extra=[*BUNDLED, "data.lm_copy_warmup=1.0"])
