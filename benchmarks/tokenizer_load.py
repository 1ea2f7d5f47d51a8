"""What loading a tokenizer costs a fresh process: transformers.AutoTokenizer against shine_jax's hf_tokenizer.

    .venv/bin/python benchmarks/tokenizer_load.py [--repeats 5] [--folder models/tiny_base]

Each repeat starts three Python processes in turn: one loads FOLDER's tokenizer with transformers and renders one
chat prompt, one does the same with ``shine_jax.data.hf_tokenizer.Tokenizer``, one does nothing (the interpreter's
own start-up). Prints the median, min and max seconds of each.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CHAT = "t.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False, add_generation_prompt=True)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--folder", default="models/tiny_base")
    a = p.parse_args()
    code = {
        "transformers": "from transformers import AutoTokenizer; "
                        f"t = AutoTokenizer.from_pretrained({a.folder!r}, padding_side='left'); {CHAT}",
        "hf_tokenizer": "from shine_jax.data.hf_tokenizer import Tokenizer; "
                        f"t = Tokenizer.from_folder({a.folder!r}, padding_side='left'); {CHAT}",
        "python": "pass",
    }
    times: dict[str, list[float]] = {k: [] for k in code}
    for _ in range(a.repeats):
        for name, src in code.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", src], check=True)
            times[name].append(time.perf_counter() - t)
    for name, v in times.items():
        print(f"{name:14s} median {statistics.median(v):.2f} s  (min {min(v):.2f}, max {max(v):.2f}, n={len(v)})")


if __name__ == "__main__":
    main()
