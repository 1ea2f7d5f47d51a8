"""Evaluate one trained folder: ``python -m shine_jax.eval --workdir W --data F.jsonl --out R.json [...]``.

The entry point a sweep runs for each point's ``--eval``. With ``--result FILE`` the outcome is written there as
JSON (the files written, or a user-fixable error as ``{"error": "<one line>"}``, exit status 2), so the parent never
reads logs; a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from shine_jax.entry import run_entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shine_jax.eval", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a SHINE folder or a workdir with a trained stage")
    p.add_argument("--data", required=True, help="JSONL document-QA records")
    p.add_argument("--out", required=True, help="results JSON (the table and plot go beside it)")
    p.add_argument("--methods", default="none,icl,shine")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--result", help="write the written files (or {'error': ...}) here as JSON")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def evaluate() -> dict:
        from shine_jax.errors import writing
        from shine_jax.eval.methods import EvalSettings
        from shine_jax.eval.run import evaluate_jsonl

        settings = EvalSettings(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        with writing(args.out):
            _, files = evaluate_jsonl(args.workdir, args.data, methods, settings, args.out, limit=args.limit,
                                      progress=not args.no_progress)
        return {"files": {k: str(v) for k, v in files.items()}}

    return run_entry(evaluate, args.result)


if __name__ == "__main__":
    sys.exit(main())
