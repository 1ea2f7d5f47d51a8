"""The bundled biography corpus as a TensorFlow Datasets builder, stored as ArrayRecord and read with grain.

``corpus.py`` is the source of truth: this module only materialises its documents on disk so that training jobs
get random access (``grain.MapDataset``), sharding and a stable on-disk artefact without regenerating text. No
TensorFlow code runs: tfds writes and reads ``array_record`` files with its NumPy-only code paths.

Configs (``BUILDER_CONFIGS``):

* ``mqa`` -- multi-QA documents about 1-4 people each, exactly ``corpus.build_corpus`` for the same settings.
* ``mqa_distractors`` -- the same documents with ``distractors`` (2) unrelated bios from the same split inserted
  at random paragraph boundaries (``corpus.add_distractors``); the QA lists are unchanged.
* ``single_person`` -- one person per document, for comparisons.

Any field can be overridden (``prepare(data_dir, "mqa", num_people=300, train_docs=200)``); the overridden config
gets its own name (``mqa-p300-tr200``) and hence its own directory, so differently sized corpora never collide.

Features: ``id`` and ``context`` (Text), ``questions`` (Sequence(Text)) and ``answers`` (Sequence(Text), the
JSON-encoded answer list of each question, which is lossless for any list of strings). :func:`load_split`
decodes the stored examples back to the project's JSON Lines record format::

    {"id": str, "context": str, "qa": [{"question": str, "answers": [str, ...]}, ...]}

Typical use::

    from shine_jax.data import tfds_builder as B
    train = B.load_split("/data/tfds", "train", "mqa")          # prepares on the first call, reuses afterwards
    train[0]["qa"][0]["answers"]                                 # -> ['Drelmouth']
    batches = train.shuffle(seed=0).repeat().to_iter_dataset()   # ... usual grain pipeline
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import warnings
from typing import Any, Iterator, Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import grain  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from shine_jax.data import corpus as C  # noqa: E402

__all__ = [
    "ShineBios", "ShineBiosConfig", "BUILDER_CONFIGS", "CONFIG_NAMES", "make_config", "prepare", "load_split",
    "records_from_jsonl", "generate_records", "encode_record", "decode_example", "corpus_fingerprint",
]

# Every config field that may be overridden, with the short tag used to name an overridden config.
_FIELD_TAGS = {
    "seed": "s",
    "num_people": "p",
    "train_docs": "tr",
    "validation_docs": "va",
    "test_docs": "te",
    "min_people": "min",
    "max_people": "max",
    "distractors": "k",
}


@dataclasses.dataclass(eq=False)
class ShineBiosConfig(tfds.core.BuilderConfig):
    """One corpus variant. The documents are a pure function of these fields (and of ``corpus.py``)."""

    seed: int = 0
    num_people: int = C.DEFAULT_NUM_PEOPLE
    train_docs: int = C.DEFAULT_DOCS_PER_SPLIT["train"]
    validation_docs: int = C.DEFAULT_DOCS_PER_SPLIT["validation"]
    test_docs: int = C.DEFAULT_DOCS_PER_SPLIT["test"]
    min_people: int = 1
    max_people: int = 4
    distractors: int = 0

    def docs(self, split: str) -> int:
        return {"train": self.train_docs, "validation": self.validation_docs, "test": self.test_docs}[split]

    def settings(self) -> dict[str, int]:
        """The fields that determine the data (everything but the name/description)."""
        return {field: getattr(self, field) for field in _FIELD_TAGS}


BUILDER_CONFIGS = (
    ShineBiosConfig(
        name="mqa",
        description="Multi-QA documents about 1-4 people each (one question per stated fact), split by person.",
    ),
    ShineBiosConfig(
        name="mqa_distractors",
        distractors=2,
        description="The 'mqa' documents padded with 2 unrelated bios of the same split; QA unchanged.",
    ),
    ShineBiosConfig(
        name="single_person",
        min_people=1,
        max_people=1,
        description="One person per document (one question per stated fact), split by person.",
    ),
)
CONFIG_NAMES = tuple(config.name for config in BUILDER_CONFIGS)
_BASE_CONFIGS = {config.name: config for config in BUILDER_CONFIGS}


