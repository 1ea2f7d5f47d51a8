"""Train one stage: ``python -m shine_jax.train --config FILE:STAGE --workdir W [--config.FIELD=VALUE ...]``.

The entry point a sweep runs for each of its points (``shine-jax train`` adds multi-host flags to the same call).
With ``--result FILE`` it writes what happened as JSON, so a parent process never reads logs: on success the
stage's ``summary.json`` (validation loss, step time, device peak memory), on an error a user can fix
``{"error": "<one line>"}`` and exit status 2. A bug keeps its traceback (exit status 1, no result file).
"""

from __future__ import annotations

import argparse
import sys

from shine_jax.entry import run_entry


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m shine_jax.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="configs/X.py:STAGE")
    p.add_argument("--workdir", required=True)
    p.add_argument("--result", help="write the stage summary (or the error) here as JSON")
    p.add_argument("--no-progress", action="store_true")
    overrides = [a for a in argv if a.startswith("--config.")]
    return p.parse_args([a for a in argv if not a.startswith("--config.")]), overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(list(sys.argv[1:] if argv is None else argv))

    def train() -> dict:
        from shine_jax.errors import writing
        from shine_jax.train.config import load_config
        from shine_jax.train.loop import run_stage

        with writing(args.workdir, resumable=True):
            summary = run_stage(load_config(args.config, overrides), args.workdir, progress=not args.no_progress)
        print(f"stage {summary['stage']} done: {summary['steps']} steps in {summary['wall_s']:.0f}s, val_loss "
              f"{summary.get('val_loss', float('nan')):.4f}; result in {args.workdir}/{summary['stage']}/final")
        return summary

    return run_entry(train, args.result)


if __name__ == "__main__":
    sys.exit(main())
