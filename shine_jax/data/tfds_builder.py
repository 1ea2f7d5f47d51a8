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
    batches = train.shuffle(seed=0).repeat().to_iter_dataset(grain.ReadOptions(num_threads=0))
    # in memory already: Grain's default 16 read threads would only contend for the GIL (data.read_threads)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import pathlib
import random
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import filelock  # noqa: E402
import grain  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from shine_jax.data import corpus as C  # noqa: E402
from shine_jax.errors import InputError

__all__ = [
    "ShineBios", "ShineBiosConfig", "BUILDER_CONFIGS", "CONFIG_NAMES", "make_config", "prepare", "load_split",
    "read_split", "records_from_jsonl", "generate_records", "encode_record", "decode_example", "corpus_fingerprint",
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


def corpus_fingerprint() -> str:
    """A hash of ``corpus.py``: prepared data built by a different generator is detected and rebuilt."""
    with open(C.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")


def _validate(settings: Mapping[str, int]) -> None:
    _check_int("seed", settings["seed"], -(2**63))
    for name in ("num_people", "min_people", "max_people"):
        _check_int(name, settings[name], 1)
    for name in ("train_docs", "validation_docs", "test_docs", "distractors"):
        _check_int(name, settings[name], 0)
    capacity = len(C.FIRST_NAMES) * len(C.LAST_NAMES)
    if settings["num_people"] > capacity:
        raise InputError(f"num_people must be <= {capacity} (unique full names), got {settings['num_people']}")
    if not any(settings[f"{split}_docs"] for split in C.SPLITS):
        raise InputError("every split has 0 documents")
    if settings["min_people"] > settings["max_people"]:
        raise InputError(f"need min_people <= max_people, got {settings['min_people']} > {settings['max_people']}")
    # The split sizes split_people will produce (round() of the default fractions; test gets the rest).
    n = settings["num_people"]
    n_train = round(n * C.DEFAULT_SPLIT_FRACTIONS[0])
    n_val = round(n * C.DEFAULT_SPLIT_FRACTIONS[1])
    for split, size in zip(C.SPLITS, (n_train, n_val, n - n_train - n_val)):
        if settings[f"{split}_docs"] and size < settings["max_people"]:
            raise InputError(
                f"num_people={n} leaves {size} people in the {split} split, fewer than max_people="
                f"{settings['max_people']}; use more people"
            )


def make_config(config: str | ShineBiosConfig = "mqa", **overrides: Any) -> ShineBiosConfig:
    """The config ``config`` (a name from :data:`CONFIG_NAMES` or a :class:`ShineBiosConfig`) with ``overrides``.

    ``overrides`` are config fields (``seed``, ``num_people``, ``train_docs``, ``validation_docs``, ``test_docs``,
    ``min_people``, ``max_people``, ``distractors``) or ``docs_per_split={"train": n, ...}``. Fields that differ
    from the base config are encoded in the returned config's name (``mqa-p300-tr200-va50-te50``), so each
    variant is prepared into its own directory; without effective overrides the base config itself is returned.
    """
    if isinstance(config, ShineBiosConfig):
        base = config
        builtin = _BASE_CONFIGS.get(base.name)
        if builtin is not None and base is not builtin:
            if base.settings() != builtin.settings():
                raise InputError(
                    f"a custom config may not reuse the built-in name {base.name!r} with different settings; "
                    f"pass overrides or choose another name"
                )
            base = builtin
    elif isinstance(config, str):
        if config not in _BASE_CONFIGS:
            raise InputError(f"unknown config {config!r}; expected one of {CONFIG_NAMES} or a ShineBiosConfig")
        base = _BASE_CONFIGS[config]
    else:
        raise TypeError(f"config must be a name or a ShineBiosConfig, got {type(config).__name__}")

    overrides = dict(overrides)
    docs_per_split = overrides.pop("docs_per_split", None)
    if docs_per_split is not None:
        unknown = set(docs_per_split) - set(C.SPLITS)
        if unknown:
            raise InputError(f"unknown splits {sorted(unknown)} in docs_per_split; expected {C.SPLITS}")
        for split, count in docs_per_split.items():
            key = f"{split}_docs"
            if key in overrides and overrides[key] != count:
                raise InputError(f"{key}={overrides[key]} conflicts with docs_per_split[{split!r}]={count}")
            overrides[key] = count
    unknown = set(overrides) - set(_FIELD_TAGS)
    if unknown:
        raise TypeError(f"unknown config fields {sorted(unknown)}; expected some of {list(_FIELD_TAGS)}")

    settings = {**base.settings(), **overrides}
    _validate(settings)
    changed = [field for field in _FIELD_TAGS if settings[field] != getattr(base, field)]
    if not changed:
        return base
    name = base.name + "".join(f"-{_FIELD_TAGS[field]}{settings[field]}" for field in changed)
    description = f"{base.name!r} with " + ", ".join(f"{field}={settings[field]}" for field in changed)
    return ShineBiosConfig(name=name, description=description, **settings)


# ---------------------------------------------------------------------------------------------------------------
# Records <-> examples
# ---------------------------------------------------------------------------------------------------------------


def generate_records(
    config: str | ShineBiosConfig, split: str, people: Mapping[str, Sequence[C.Person]] | None = None
) -> list[dict[str, Any]]:
    """The records of ``split`` for ``config``, straight from ``corpus`` (what the builder writes, in order).

    ``people`` is ``corpus.split_people(corpus.make_people(num_people, seed), seed)`` if already computed.
    """
    cfg = config if isinstance(config, ShineBiosConfig) else make_config(config)
    if split not in C.SPLITS:
        raise InputError(f"split must be one of {C.SPLITS}, got {split!r}")
    if cfg.docs(split) == 0:
        return []
    if people is None:
        people = C.split_people(C.make_people(cfg.num_people, cfg.seed), cfg.seed)
    records = C.make_documents(
        people[split], cfg.seed, split, cfg.docs(split), min_people=cfg.min_people, max_people=cfg.max_people
    )
    if cfg.distractors:
        # The pool is the split's own documents, so distractor bios never leak people across splits.
        rng = random.Random(f"{cfg.seed}/{split}/distractors")
        records = [C.add_distractors(record, records, cfg.distractors, rng) for record in records]
    return records


def encode_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A JSONL record as a ShineBios example (answers JSON-encoded per question, which is lossless)."""
    return {
        "id": record["id"],
        "context": record["context"],
        "questions": [item["question"] for item in record["qa"]],
        "answers": [json.dumps(list(item["answers"]), ensure_ascii=False) for item in record["qa"]],
    }


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_example(example: Mapping[str, Any]) -> dict[str, Any]:
    """A stored example (bytes and NumPy object arrays, as tfds returns them) back to a JSONL record of ``str``."""
    questions = [_text(q) for q in example["questions"]]
    answers = [json.loads(_text(a)) for a in example["answers"]]
    if len(questions) != len(answers):
        raise InputError(f"example {_text(example['id'])!r}: {len(questions)} questions but {len(answers)} answers")
    return {
        "id": _text(example["id"]),
        "context": _text(example["context"]),
        "qa": [{"question": q, "answers": a} for q, a in zip(questions, answers)],
    }


# ---------------------------------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------------------------------


class ShineBios(tfds.core.GeneratorBasedBuilder):
    """Fictional biographies with name-bound questions (``shine_jax.data.corpus``), split by person."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(BUILDER_CONFIGS)
    DEFAULT_CONFIG_NAME = "mqa"

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo is built directly rather than with dataset_info_from_configs, which would look for
        # README/CITATIONS files next to this module.
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Deterministic synthetic biographies of invented people for SHINE (document -> LoRA). "
                "Records: id, context, and one question per stated fact with its answers "
                "(answers[i] is the JSON-encoded answer list of questions[i])."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "context": tfds.features.Text(),
                    "questions": tfds.features.Sequence(tfds.features.Text()),
                    "answers": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            disable_shuffling=True,  # keep corpus order: record i of a split is corpus document i
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        self.info.metadata.update(corpus_fingerprint=corpus_fingerprint(), settings=cfg.settings())
        people = C.split_people(C.make_people(cfg.num_people, cfg.seed), cfg.seed)
        # tfds cannot write an empty split: a split with 0 documents is left out (load_split gives it as empty).
        return {split: self._generate_examples(split, people) for split in C.SPLITS if cfg.docs(split)}

    def _generate_examples(self, split, people):
        for record in generate_records(self.builder_config, split, people):
            yield record["id"], encode_record(record)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence tfds's progress bars, banner prints and "custom data configuration" warnings unless verbose."""
    if verbose:
        yield
        return
    from tensorflow_datasets.core.utils import tqdm_utils

    was_active = getattr(tqdm_utils, "_active", True)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    tqdm_utils.display_progress_bar(False)
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(was_active)
        absl_logger.setLevel(level)


def _stale_reason(builder: ShineBios, cfg: ShineBiosConfig) -> str | None:
    metadata = dict(builder.info.metadata or {})
    if metadata.get("corpus_fingerprint") != corpus_fingerprint():
        return (
            f"it was built by a different corpus.py (fingerprint {metadata.get('corpus_fingerprint')}, "
            f"now {corpus_fingerprint()})"
        )
    if metadata.get("settings") != cfg.settings():
        return f"it was built with settings {metadata.get('settings')}, not {cfg.settings()}"
    return None


def _builder(data_dir: str | os.PathLike[str] | None, cfg: ShineBiosConfig) -> ShineBios:
    return ShineBios(
        data_dir=None if data_dir is None else os.fspath(data_dir),
        config=cfg.name if _BASE_CONFIGS.get(cfg.name) is cfg else cfg,
        file_format="array_record",
    )


def _download_and_prepare(builder: ShineBios, download_config: Any) -> None:
    try:
        builder.download_and_prepare(download_config=download_config)
    except BaseException:
        # tfds removes its incomplete.* directory but leaves the (empty) config/version directories behind.
        version_dir = os.fspath(builder.data_path)
        for directory in (version_dir, os.path.dirname(version_dir)):
            with contextlib.suppress(OSError):
                os.rmdir(directory)  # only succeeds when empty
        raise


def _build_lock(data_dir: str | os.PathLike[str] | None, cfg: ShineBiosConfig) -> filelock.FileLock:
    """Processes preparing the same config in one data dir take turns: the second waits, then finds the split
    built and reuses it (tfds alone would race on its incomplete.* rename)."""
    root = pathlib.Path(os.path.expanduser(data_dir or "~/tensorflow_datasets"))
    root.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(root / f".shine_bios-{cfg.name}.lock"))


def prepare(
    data_dir: str | os.PathLike[str] | None,
    config: str | ShineBiosConfig = "mqa",
    *,
    verbose: bool = False,
    **overrides: Any,
) -> ShineBios:
    """Prepare (once) and return the builder for ``config`` with ``overrides`` (see :func:`make_config`).

    Files go to ``<data_dir>/shine_bios/<config name>/1.0.0/`` as ``array_record``. A second call reuses them;
    data prepared by a different ``corpus.py`` or with different settings under the same name is rebuilt with a
    warning. ``data_dir=None`` means tfds's default (``~/tensorflow_datasets``). ``verbose`` shows tfds's
    progress bars and messages.
    """
    cfg = make_config(config, **overrides)
    with _quiet(verbose), _build_lock(data_dir, cfg):
        builder = _builder(data_dir, cfg)
        if builder.is_prepared():
            reason = _stale_reason(builder, cfg)
            if reason is None:
                return builder
            warnings.warn(f"rebuilding {builder.data_dir}: {reason}", stacklevel=2)
            mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
            _download_and_prepare(builder, tfds.download.DownloadConfig(download_mode=mode))
        else:
            _download_and_prepare(builder, None)
        return _builder(data_dir, cfg)  # a fresh builder reads the info (split sizes, metadata) from disk


def load_split(
    data_dir: str | os.PathLike[str] | None,
    split: str,
    config: str | ShineBiosConfig = "mqa",
    **overrides: Any,
) -> grain.MapDataset:
    """A ``grain.MapDataset`` of ``split``'s records (JSONL format, ``str`` values), preparing the data if needed.

    ``split`` may use tfds slicing (``"train[:1000]"``). Records come in corpus order; shuffle with grain.
    """
    source = _split_source(data_dir, split, config, **overrides)
    return grain.MapDataset.source(source).map(decode_example)


def read_split(
    data_dir: str | os.PathLike[str] | None,
    split: str,
    config: str | ShineBiosConfig = "mqa",
    **overrides: Any,
) -> list[dict[str, Any]]:
    """All of ``split``'s records as a list, read in one batched call (what the trainer and the evaluator need:
    ~1.5x faster than indexing :func:`load_split` record by record)."""
    source = _split_source(data_dir, split, config, **overrides)
    return [decode_example(e) for e in source.__getitems__(list(range(len(source))))] if len(source) else []


def _split_source(data_dir, split: str, config, **overrides):
    """The random-access source of ``split`` (preparing the data if needed); ``[]`` for a split of 0 documents,
    which tfds does not write."""
    builder = prepare(data_dir, config, **overrides)
    name = split.split("[", 1)[0]
    if name in C.SPLITS and builder.builder_config.docs(name) == 0:
        return []
    return builder.as_data_source(split)


def records_from_jsonl(path: str | os.PathLike[str], skip_bad_lines: bool = False) -> grain.MapDataset:
    """A ``grain.MapDataset`` over a user JSONL file, validated by ``corpus.read_jsonl``.

    A malformed line raises ``ValueError`` naming the file and its 1-based line number; with
    ``skip_bad_lines=True`` it is skipped with a warning instead. Records without an ``id`` get
    ``"<file stem>-<index>"``.
    """
    records = C.read_jsonl(path, skip_bad_lines=skip_bad_lines)
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    for index, record in enumerate(records):
        record.setdefault("id", f"{stem}-{index:06d}")
    return grain.MapDataset.source(records)
