"""``hf_tokenizer.Tokenizer`` against ``transformers.AutoTokenizer`` on the same folders: the bundled tokenizer,
the MiniLM embedder's WordPiece tokenizer, and a made-up one with a post-processor that adds BOS/EOS, special
tokens written as AddedToken dicts, clean-up of spaces and a chat template with a default system turn."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from shine_jax.data.hf_tokenizer import Tokenizer
from tests.conftest import REPO

TEXTS = ["Velmora is where Ada Quell was born.", "  two  spaces\n\nand a <|im_end|> token , don't .",
         "Zuquaxo Gwythy's job?", "é ü 中文", "Where was Ada born? " * 40]
MESSAGES = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "And then?"}]
SYSTEM_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                   "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def made_up_folder(path):
    """A word-level tokenizer whose post-processor wraps every text in <s> ... </s>."""
    from tokenizers import AddedToken, pre_tokenizers, processors
    from tokenizers import Tokenizer as Backend
    from tokenizers import models as tmodels

    words = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "Hi", "?", "Yes", ".", "And", "then", ",",
             "don", "'", "t", "Ada", "born", "was", "Where", "system", "user", "assistant"]
    backend = Backend(tmodels.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_special_tokens([AddedToken(t, special=True) for t in words[:5]])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1),
                                                                                                  ("</s>", 2)])
    from tokenizers import decoders

    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    path.mkdir()
    backend.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
              "pad_token": "</s>", "clean_up_tokenization_spaces": True, "chat_template": SYSTEM_TEMPLATE,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module", params=["bundled", "minilm", "made_up"])
def folder(request, tmp_path_factory):
    if request.param == "bundled":
        return REPO / "models" / "tiny_base"
    if request.param == "minilm":
        from shine_jax.eval.sentence_encoder import default_folder

        return default_folder()
    return made_up_folder(tmp_path_factory.mktemp("tok") / "made_up")


def test_encoding_decoding_and_chat_equal_transformers(folder):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    ours = Tokenizer.from_folder(folder, padding_side="left")
    for name in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
        assert getattr(ours, name) == getattr(hf, name), name
    assert len(ours) == len(hf) and ours.get_vocab() == hf.get_vocab()
    assert set(ours.all_special_ids) == set(hf.all_special_ids)
    for text in TEXTS:
        for special in (True, False):
            a = hf(text, add_special_tokens=special, return_offsets_mapping=True)
            b = ours(text, add_special_tokens=special, return_offsets_mapping=True)
            assert b["input_ids"] == a["input_ids"], text
            assert [tuple(o) for o in b["offset_mapping"]] == [tuple(o) for o in a["offset_mapping"]], text
            for skip in (True, False):
                assert ours.decode(a["input_ids"], skip) == hf.decode(a["input_ids"], skip_special_tokens=skip)
    for kw in ({"padding": "longest"}, {"padding": "max_length", "truncation": True, "max_length": 7},
               {"padding": "longest", "truncation": True, "max_length": 5}):
        a, b = hf(TEXTS, return_tensors="np", **kw), ours(TEXTS, return_tensors="np", **kw)
        np.testing.assert_array_equal(b["input_ids"], a["input_ids"])
        np.testing.assert_array_equal(b["attention_mask"], a["attention_mask"])
    if hf.chat_template:
        for prompt in (True, False):
            assert ours.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=prompt) == \
                hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=prompt)


def test_added_tokens_copies_and_saved_folders(folder, tmp_path):
    """add_tokens on a deep copy leaves the original alone and encodes as transformers does; a saved folder loads
    back in both libraries with the same vocabulary, encodings and chat template."""
    from transformers import AutoTokenizer

    ours = Tokenizer.from_folder(folder)
    hf = AutoTokenizer.from_pretrained(str(folder))
    grown, hf_grown = copy.deepcopy(ours), copy.deepcopy(hf)
    grown.add_tokens(["<RECON>", "<COMP>", "<NOTHING>"])
    hf_grown.add_tokens(["<RECON>", "<COMP>", "<NOTHING>"])
    assert len(ours) == len(hf) and len(grown) == len(hf_grown)
    text = "Ada <RECON> was<COMP> born"
    assert grown(text)["input_ids"] == hf_grown(text)["input_ids"]
    grown.save_pretrained(tmp_path / "saved")
    for back in (Tokenizer.from_folder(tmp_path / "saved"), AutoTokenizer.from_pretrained(str(tmp_path / "saved"))):
        assert back.get_vocab() == grown.get_vocab() and back(text)["input_ids"] == grown(text)["input_ids"]
        assert back.eos_token_id == grown.eos_token_id and back.pad_token_id == grown.pad_token_id
        if grown.chat_template:
            assert back.apply_chat_template(MESSAGES, tokenize=False) == grown.apply_chat_template(MESSAGES,
                                                                                                   tokenize=False)


def test_a_tokenizer_load_does_not_import_transformers(tmp_path):
    """The reason this class exists: a JAX process that loads a model folder never imports transformers."""
    import subprocess
    import sys

    code = ("import sys; from shine_jax.base_model import BaseModel; b = BaseModel.from_hf('models/tiny_base');"
            "b.decode(b.chat_prompt(['Where was Ada born?'])[0]); print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
