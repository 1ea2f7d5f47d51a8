"""Memory3 (Yang et al. 2024, "Memory3: Language Modeling with Explicit Memory", arXiv 2407.01178) on a frozen base:
explicit memories are sparse attention keys/values of short references, written to disk once and read by the
attention of the first half of the layers.

Writing (``build_bank``):

* **References** are windows of ``reference_tokens`` (128) base-tokenizer tokens of each bank document, without
  overlap (``retrieval.chunk_text``, as the chunks of ``rag``). Re-tokenising a window's text can give a token more
  than the window had (a word cut from its leading space); such a reference keeps its first ``reference_tokens``.
* Each reference is **encoded on its own** by the frozen base: ``prefix`` ("Reference: ", tokenised apart) then the
  reference's tokens, causal mask, positions 0..n-1 over both. The prefix tokens are never kept.
* **Memory layers** are the first half of the decoder layers (``num_layers // 2``, at least one). In each memory
  layer and each KV head a reference keeps the ``top_k`` (8) of its tokens that receive the most attention inside
  the reference: the softmax of q.k / sqrt(d) over the reference's tokens (the prefix is neither a query nor a key),
  with no causal mask and no positions (q and k before RoPE), summed over the reference's queries and over the
  query heads of the KV group. Kept tokens stay in their order in the reference. A reference shorter than ``top_k``
  keeps all its tokens (``kept`` < ``top_k``; the other slots are zeros and never attended to).
* **Keys are stored before RoPE** (after Qwen3's k norm), values as they are, in the decoder's compute dtype, laid
  out ``[reference, memory layer, slot, KV head, head dim]`` (the KV cache's token-major order). RoPE is applied
  when the memory is read, at the shared memory positions below, so what is stored does not depend on them.
* **Storage**: one safetensors file per bank document (``keys``, ``values`` and ``kept``: tokens kept per
  reference, int32) and ``memory3.json`` (settings, model shape, each document's file and reference texts),
  assembled aside and renamed into place (``fileutil.atomic_dir``). Generation reads the bank back from these
  files. A document's storage is the bytes of its three arrays, which is what its file holds besides its header.

Reading (``generate``):

* The sequence (prompt and generated tokens, real tokens only) is cut into chunks of ``interval`` (64) tokens, and
  each chunk retrieves ``memories`` (5) references: the cosine similarity of the sentence embedder (``rag``'s,
  ``retrieval.ChunkIndex``) between the chunk's text and the references' texts. A prompt chunk is queried with its
  own text (the whole prompt is known before decoding; the chat template's special tokens are dropped); a chunk
  that begins during generation is queried with the 64 tokens before it (its own text does not exist yet), so
  decoding retrieves anew every 64 tokens. Without a bank a record searches its own document's references only; in
  the bank setting, every reference of the bank.
* In the memory layers every token attends to all memory tokens of its own chunk (no mask among them) before the
  sequence's keys (the decoder's ``extra_kv``); earlier chunks are still seen through the KV cache, whose entries
  were computed with their own chunks' memories. The other layers are unchanged.
* **Positions**: all memories share one interval: slot j of every memory (its j-th kept token) has position j,
  0..top_k-1, and the sequence starts at position ``top_k`` (the cache's ``next_pos``), right after them. Shifting
  the sequence changes nothing else (RoPE is relative).
* Decoding is greedy, as the harness's other methods, and stops at EOS; it runs in jitted segments between
  retrievals.

Training (``read_loss``, the stage ``memory3_train``; data: ``data.memory3_data``): the paper pretrains its model
to read memories. Here a copy of the base is fine-tuned whole on rows that read memories encoded by
``encode_memories``, the bank's own encoder, with the weights being trained and with gradient through the kept
keys and values (not through which tokens are kept: an index). ``--memory3-base`` (or a workdir's
``memory3_train/final``) makes the method write and read with that base; without it, the method runs on the SHINE
run's frozen base, trained without memories.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from shine_jax.data.prompts import encode_text
from shine_jax.errors import InputError
from shine_jax.eval.retrieval import ChunkIndex, RetrievalSettings
from shine_jax.fileutil import atomic_dir
from shine_jax.model import layers as L
from shine_jax.model.config import ModelConfig
from shine_jax.model.decoder import attention_qkv, layer_forward, positions_from_mask
from shine_jax.model.losses import chunked_lm_loss

BANK_JSON = "memory3.json"
FORMAT = "shine_jax memory3 bank 1"


@dataclasses.dataclass(frozen=True)
class Memory3Settings:
    reference_tokens: int = 128  # base-tokenizer tokens per reference
    top_k: int = 8  # tokens a reference keeps per memory layer and KV head
    memories: int = 5  # references retrieved per chunk
    interval: int = 64  # tokens per chunk: a retrieval every this many tokens
    prefix: str = "Reference: "  # put before each reference when it is encoded, never kept
    directory: str = ""  # where the bank is written; "": a temporary folder, removed with the method
    batch_size: int = 16  # references per encoding pass
    base: str = ""  # the base that writes and reads memories (memory3_train's); "": the evaluated SHINE's base

    def check(self) -> None:
        for value, what in ((self.top_k, "tokens kept per reference (top-k)"),
                            (self.memories, "memories retrieved per chunk"),
                            (self.reference_tokens, "reference size in tokens"),
                            (self.interval, "retrieval interval in tokens"), (self.batch_size, "encoding batch size")):
            if value < 1:
                raise InputError(f"memory3: the {what} must be >= 1, got {value}")
        if self.top_k > self.reference_tokens:
            raise InputError(f"memory3: top-k {self.top_k} is more than the {self.reference_tokens} tokens of a "
                             f"reference")


def memory_layers(cfg: ModelConfig) -> int:
    """The layers that read memories: the first half."""
    return max(1, cfg.num_layers // 2)


# ------------------------------------------------------------------------------------------- sparsification
def received_attention(q: jax.Array, k: jax.Array, valid: jax.Array) -> jax.Array:
    """The attention each token receives ``[B, nkv, T]`` (float32): q ``[B, T, nh, hd]`` and k ``[B, T, nkv, hd]``
    before RoPE, ``valid`` ``[B, T]`` the tokens that are queries and keys. Softmax over the valid keys with no
    causal mask, summed over the valid queries and over the query heads of each KV group."""
    b, t, nh, hd = q.shape
    nkv = k.shape[2]
    qg = q.astype(jnp.float32).reshape(b, t, nkv, nh // nkv, hd)
    hi = jax.lax.Precision.HIGHEST  # a ranking: no reduced-precision matmul passes on accelerators
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(jnp.float32), precision=hi) * hd**-0.5
    # finfo.min, not -inf: a row of only padding stays finite (uniform), and it is weighted 0 below
    scores = jnp.where(valid[:, None, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bhgqk,bq->bhk", probs, valid.astype(jnp.float32), precision=hi)


def select_tokens(q: jax.Array, k: jax.Array, valid: jax.Array, top_k: int) -> tuple[jax.Array, jax.Array]:
    """The ``top_k`` tokens per KV head that receive the most attention (``received_attention``): indices
    ``[B, nkv, top_k]`` in sequence order, and which slots hold a token (fewer than ``top_k`` valid tokens leave
    the last slots empty)."""
    t = q.shape[1]
    score = jnp.where(valid[:, None, :], received_attention(q, k, valid), -jnp.inf)
    best, idx = jax.lax.top_k(score, top_k)
    order = jnp.sort(jnp.where(jnp.isfinite(best), idx, idx + t), axis=-1)  # chosen tokens first, in order
    return order % t, order < t


def keep_tokens(x: jax.Array, idx: jax.Array, ok: jax.Array) -> jax.Array:
    """x ``[B, T, nkv, hd]`` -> the selected tokens of each head ``[B, top_k, nkv, hd]``, empty slots zero."""
    taken = jnp.take_along_axis(x.swapaxes(1, 2), idx[..., None], axis=2)  # [B, nkv, top_k, hd]
    return jnp.where(ok[..., None], taken, 0).swapaxes(1, 2)


def encode_memories(decoder, ids: jax.Array, mask: jax.Array, ref_valid: jax.Array, layers: int,
                    top_k: int) -> tuple[jax.Array, jax.Array]:
    """Keys (before RoPE) and values of the kept tokens of each reference, ``[B, layers, top_k, nkv, hd]`` each:
    ``ids``/``mask`` ``[B, T]`` the prefix and reference (right-padded), ``ref_valid`` ``[B, T]`` the reference's
    tokens. Only the memory layers run (the last one only to its keys and values). Pure and differentiable in the
    decoder's weights (the choice of tokens is not: it is an index): the bank's writer and ``memory3_train``'s loss
    both call it, so training reads memories made exactly as evaluation makes them."""
    cfg = decoder.cfg
    x = decoder.embed_tokens(ids)
    cos, sin = L.rope_cos_sin(positions_from_mask(mask), cfg.head_dim, cfg.rope_theta)
    causal = L.attention_mask(mask.astype(bool), 0, ids.shape[1])
    stacked = decoder.layers.weights()
    keys, values = [], []
    for layer in range(layers):
        w = {n: a[layer].astype(decoder.dtype) for n, a in stacked.items()}
        q, k, v = attention_qkv(cfg, w, x)
        idx, ok = select_tokens(q, k, ref_valid, top_k)
        keys.append(keep_tokens(k, idx, ok))
        values.append(keep_tokens(v, idx, ok))
        if layer + 1 < layers:  # the next memory layer's input
            x, _ = layer_forward(cfg, w, x, cos, sin, causal, (), None, 0, decoder.dtype)
    return jnp.stack(keys, axis=1), jnp.stack(values, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _encode(graphdef, layers: int, top_k: int, state, ids, mask, ref_valid):
    return encode_memories(nnx.merge(graphdef, state), ids, mask, ref_valid, layers, top_k)


def reference_rows(tok, texts: Sequence[str], s: Memory3Settings, rows: int | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What ``encode_memories`` reads for references ``texts``: (ids, mask, ref_valid) ``[rows, len(prefix) +
    reference_tokens]``, the prefix then the reference's first ``reference_tokens`` tokens, right-padded (rows past
    ``texts`` are empty)."""
    return reference_rows_of_ids(tok, [encode_text(tok, t)[: s.reference_tokens] for t in texts], s, rows)


def reference_rows_of_ids(tok, refs: Sequence[Sequence[int]], s: Memory3Settings, rows: int | None = None,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``reference_rows`` of references already tokenised (at most ``reference_tokens`` ids each)."""
    prefix = encode_text(tok, s.prefix)
    length = len(prefix) + s.reference_tokens  # one shape for every batch
    rows = len(refs) if rows is None else rows
    ids = np.full((rows, length), tok.pad_token_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    ref_valid = np.zeros((rows, length), bool)
    for i, ref in enumerate(refs):
        ids[i, :len(prefix) + len(ref)] = prefix + list(ref)
        mask[i, :len(prefix) + len(ref)] = 1
        ref_valid[i, len(prefix):len(prefix) + len(ref)] = True
    return ids, mask, ref_valid


def encode_references(base, texts: Sequence[str], s: Memory3Settings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, values ``[R, memory layers, top_k, nkv, hd]``, tokens kept ``[R]``) of the references ``texts``."""
    layers = memory_layers(base.cfg)
    keys, values, kept = [], [], []
    for start in range(0, len(texts), s.batch_size):
        batch = texts[start:start + s.batch_size]
        ids, mask, ref_valid = reference_rows(base.tokenizer, batch, s, s.batch_size)  # padding rows: empty
        k, v = _encode(base.graphdef, layers, s.top_k, base.state, *base.put_batch(ids, mask, ref_valid))
        keys.append(np.asarray(k)[: len(batch)])
        values.append(np.asarray(v)[: len(batch)])
        kept.append(np.minimum(ref_valid[: len(batch)].sum(1), s.top_k))
    return np.concatenate(keys), np.concatenate(values), np.concatenate(kept).astype(np.int32)


TRAINED = pathlib.Path("memory3_train") / "final"  # where a workdir keeps its memory-reading base
SHARED_SETTINGS = ("reference_tokens", "top_k", "memories", "prefix")  # what training and reading must agree on


def training_mismatch(base_dir: str | pathlib.Path, s: Memory3Settings) -> str | None:
    """How ``s`` differs from the settings the ``memory3_train`` stage behind ``base_dir`` trained with (its
    ``summary.json``), or None when they agree or the folder is not such a stage's ``final``."""
    path = pathlib.Path(base_dir)
    path = path / TRAINED if (path / TRAINED).is_dir() else path
    summary = path.parent / "summary.json"
    if path.name != "final" or not summary.is_file():
        return None
    trained = json.loads(summary.read_text(encoding="utf-8")).get("settings", {})
    diff = [f"{name} {trained[f'memory3.{name}']!r} -> {getattr(s, name)!r}" for name in SHARED_SETTINGS
            if f"memory3.{name}" in trained and trained[f"memory3.{name}"] != getattr(s, name)]
    return ", ".join(diff) or None


def load_reading_base(path: str | pathlib.Path, compute_dtype: str | None = None):
    """The base of ``--memory3-base``: a shine_jax model folder (``memory3_train``'s ``final``), a workdir holding
    one, or a Hugging Face folder (with SHINE's tokens added, as training loads one, so that it shares the SHINE
    run's tokenizer)."""
    from shine_jax.base_model import BaseModel
    from shine_jax.checkpoints import is_model_folder
    from shine_jax.shine import with_shine_tokens

    path = pathlib.Path(path)
    if is_model_folder(path / TRAINED):
        path = path / TRAINED
    if is_model_folder(path):
        return BaseModel.load(path, compute_dtype=compute_dtype)
    if (path / "config.json").is_file():
        return with_shine_tokens(BaseModel.from_hf(path, compute_dtype=compute_dtype))
    raise InputError(f"memory3: {path} is no base model folder (model.json or config.json), nor a workdir with "
                     f"{TRAINED}")


def same_tokenizer(a, b) -> bool:
    return a is b or (len(a) == len(b) and a.get_vocab() == b.get_vocab())


# ------------------------------------------------------------------------------------------------- storage
@dataclasses.dataclass
class MemoryBank:
    index: ChunkIndex  # the references: texts, bank document of each, embeddings
    keys: np.ndarray  # [R, memory layers, top_k, nkv, hd], before RoPE
    values: np.ndarray  # [R, memory layers, top_k, nkv, hd]
    kept: np.ndarray  # [R] tokens each reference keeps (top_k, fewer for a shorter reference)
    path: pathlib.Path  # the folder it was read from
    documents: int
    array_bytes: int  # bytes of the stored arrays (keys, values, kept) of every document

    def search(self, queries: Sequence[str], n: int, only_docs: Sequence[int] | None = None) -> list[list[int]]:
        """The ``n`` references most similar to each query, best first (``ChunkIndex.search``)."""
        return self.index.search(queries, min(n, len(self.index)), only_docs)

    def gather(self, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """refs ``[B, n]`` reference ids (-1: none) -> keys, values ``[layers, B, n * top_k, nkv, hd]`` (slot
        ``m * top_k + j``: token j of memory m) and which slots hold a token ``[B, n * top_k]``."""
        b, n = refs.shape
        top_k = self.keys.shape[2]
        safe = np.maximum(refs, 0)
        ok = (refs[..., None] >= 0) & (np.arange(top_k) < self.kept[safe][..., None])

        def slots(a):  # [B, n, layers, top_k, nkv, hd] -> [layers, B, n * top_k, nkv, hd]
            return np.moveaxis(a, 2, 0).reshape(a.shape[2], b, n * top_k, *a.shape[4:])

        return slots(self.keys[safe]), slots(self.values[safe]), ok.reshape(b, n * top_k)


def doc_file(d: int) -> str:
    return f"doc_{d:06d}.safetensors"


def write_bank(path: pathlib.Path, index: ChunkIndex, documents: int, keys: np.ndarray, values: np.ndarray,
               kept: np.ndarray, meta: dict) -> None:
    """One safetensors file per document and ``memory3.json``, written aside and renamed into ``path`` (an earlier
    bank there is replaced: it is derived data)."""
    with atomic_dir(path, overwrite=True) as tmp:
        docs = []
        for d in range(documents):
            sel = index.docs == d
            save_file({"keys": np.ascontiguousarray(keys[sel]), "values": np.ascontiguousarray(values[sel]),
                       "kept": kept[sel]}, str(tmp / doc_file(d)))
            docs.append({"file": doc_file(d), "references": [index.texts[r] for r in np.flatnonzero(sel)]})
        (tmp / BANK_JSON).write_text(json.dumps({"format": FORMAT, **meta, "documents": docs}, indent=1))


def read_bank(path: pathlib.Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, int]:
    """(metadata, keys, values, kept, array bytes) of a bank folder, documents in order."""
    meta = json.loads((path / BANK_JSON).read_text())
    if meta.get("format") != FORMAT:
        raise InputError(f"{path} is not a memory3 bank ({BANK_JSON} format {meta.get('format')!r})")
    files = [load_file(str(path / d["file"])) for d in meta["documents"]]
    array_bytes = sum(a.nbytes for f in files for a in f.values())
    return (meta, *(np.concatenate([f[name] for f in files]) for name in ("keys", "values", "kept")), array_bytes)


def build_bank(base, documents: Sequence[str], embedder, s: Memory3Settings, retrieval: RetrievalSettings,
               path: pathlib.Path) -> MemoryBank:
    """Cut ``documents`` into references, embed them (``embedder``, for retrieval), encode and sparsify them,
    write the bank to ``path`` and read it back."""
    index = ChunkIndex.build(documents, embedder, base.tokenizer,
                             dataclasses.replace(retrieval, chunk_tokens=s.reference_tokens, overlap=0))
    keys, values, kept = encode_references(base, index.texts, s)
    cfg = base.cfg
    meta = {"settings": {k: v for k, v in dataclasses.asdict(s).items() if k not in ("directory", "batch_size")},
            "base": str(base.origin.path) if base.origin else "",
            "memory_layers": memory_layers(cfg), "num_layers": cfg.num_layers, "num_kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim, "dtype": str(keys.dtype),
            "layout": "keys, values: [reference, memory layer, slot, kv head, head dim]; kept: [reference]",
            "keys": "before RoPE; read at positions 0..top_k-1, the context after them"}
    write_bank(path, index, len(documents), keys, values, kept, meta)
    _, keys, values, kept, array_bytes = read_bank(path)
    return MemoryBank(index, keys, values, kept, path, len(documents), array_bytes)


# ------------------------------------------------------------------------------------------------- reading
def memory_kv(cfg: ModelConfig, top_k: int, keys: jax.Array, values: jax.Array,
              sees: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The decoder's ``extra_kv`` from memory slots: keys/values ``[layers, B, S, nkv, hd]`` of the memory layers
    (keys before RoPE), ``sees`` ``[B, T, S]`` which slots each query reads. Slot s sits at position s % top_k (all
    memories share positions 0..top_k-1); layers past the memory layers read nothing."""
    layers, b, s = keys.shape[:3]
    cos, sin = L.rope_cos_sin((jnp.arange(s) % top_k)[None], cfg.head_dim, cfg.rope_theta)
    rotated = L.apply_rope(keys.reshape(layers * b, *keys.shape[2:]), cos, sin).reshape(keys.shape)

    def all_layers(a):
        return jnp.concatenate([a, jnp.zeros((cfg.num_layers - layers, *a.shape[1:]), a.dtype)])

    reads = jnp.arange(cfg.num_layers) < layers
    return all_layers(rotated), all_layers(values), sees[None] & reads[:, None, None, None]


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _prefill(graphdef, top_k: int, length: int, state, ids, mask, loras, keys, values, sees):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(ids.shape[0], length)
    cache = dict(cache, next_pos=jnp.full_like(cache["next_pos"], top_k))  # the context after the memories
    return model.extend(cache, ids, mask, loras, memory_kv(model.cfg, top_k, keys, values, sees))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decode(graphdef, top_k: int, state, carry, stop, loras, keys, values, ok, eos, pad):
    """Greedy steps from ``carry`` = (step, logits, cache, done, out) until step ``stop`` or every row is done,
    each new token reading the memory slots ``ok`` ``[B, S]`` (as ``base_model``'s generation loop)."""
    model = nnx.merge(graphdef, state)
    extra = memory_kv(model.cfg, top_k, keys, values, ok[:, None, :])

    def step(carry):
        i, logits, cache, done, out = carry
        tok = jnp.where(done, pad, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))
        logits, cache = model.extend(cache, tok[:, None], (~done)[:, None].astype(jnp.int32), loras, extra)
        return i + 1, logits, cache, done | jnp.isin(tok, eos), out

    return jax.lax.while_loop(lambda c: (c[0] < stop) & ~jnp.all(c[3]), step, carry)


def read_loss(decoder, batch: dict, top_k: int) -> tuple[jax.Array, jax.Array]:
    """``memory3_train``'s loss: the NLL of ``labels`` (``losses.chunked_lm_loss``: mean, labelled positions) of
    rows that read the memories of their references, encoded now by ``decoder`` itself (``encode_memories``, so
    the gradient reaches the writing as well as the reading).

    ``batch``: ``input_ids``, ``attention_mask``, ``labels`` ``[B, T]`` (left-padded) and ``ref_ids``, ``ref_mask``,
    ``ref_valid`` ``[B, N, L]`` (``reference_rows``; an empty row is no memory). Every token of a row reads all
    of its row's memories, laid out as ``generate`` lays out one chunk's: slot j of every memory at position j,
    the row from position ``top_k`` on."""
    cfg = decoder.cfg
    b, n, length = batch["ref_ids"].shape
    flat = [batch[k].reshape(b * n, length) for k in ("ref_ids", "ref_mask", "ref_valid")]
    keys, values = encode_memories(decoder, *flat, memory_layers(cfg), top_k)

    def slots(a):  # [B * N, layers, top_k, nkv, hd] -> [layers, B, N * top_k, nkv, hd], as MemoryBank.gather
        a = a.reshape(b, n, *a.shape[1:])
        return jnp.moveaxis(a, 2, 0).reshape(a.shape[2], b, n * top_k, *a.shape[4:])

    kept = jnp.minimum(batch["ref_valid"].sum(-1), top_k)  # [B, N], as MemoryBank.kept
    ok = (jnp.arange(top_k) < kept[..., None]).reshape(b, n * top_k)
    mask = batch["attention_mask"]
    sees = mask.astype(bool)[:, :, None] & ok[:, None, :]
    extra = memory_kv(cfg, top_k, slots(keys), slots(values), sees)
    x, _, _ = decoder.run_layers(decoder.embed_tokens(batch["input_ids"]), mask.astype(bool),
                                 top_k + positions_from_mask(mask), extra_kv=extra)
    return chunked_lm_loss(x, decoder.project_logits, batch["labels"])


Retrieve = Callable[[list[int], list[str]], list[list[int]]]  # (rows, query texts) -> reference ids, best first


def generate(base, bank: MemoryBank, ids: np.ndarray, mask: np.ndarray, rows: int, max_new_tokens: int,
             retrieve: Retrieve, s: Memory3Settings, loras: Sequence[dict] = ()) -> np.ndarray:
    """Greedy Memory3 decoding of a left-padded batch: ``[B, max_new_tokens]`` new ids (pad after EOS). The first
    ``rows`` rows are real (the others are padding: no memory, no decoding); ``retrieve`` names the references of
    each chunk."""
    tok = base.tokenizer
    b, t = ids.shape
    seqs = [ids[r][np.asarray(mask[r], bool)].tolist() for r in range(b)]
    n = np.array([len(x) for x in seqs])
    chunks = -(-t // s.interval)

    def text(r, start):  # the chunk of row r's sequence starting at token ``start``
        return tok.decode(seqs[r][start:start + s.interval], skip_special_tokens=True)

    # the prompt: every chunk retrieves with its own text
    where = [(r, c) for r in range(rows) for c in range(-(-n[r] // s.interval))]
    refs = np.full((b, chunks, s.memories), -1)
    for (r, c), hits in zip(where, retrieve([r for r, _ in where], [text(r, c * s.interval) for r, c in where])):
        refs[r, c, :len(hits)] = hits
    keys, values, ok = bank.gather(refs.reshape(b, -1))
    chunk_of = np.where(np.asarray(mask, bool), (np.cumsum(mask, axis=1) - 1) // s.interval, -1)
    slot_chunk = np.repeat(np.arange(chunks), s.memories * s.top_k)
    sees = (chunk_of[:, :, None] == slot_chunk[None, None, :]) & ok[:, None, :]
    ids_d, mask_d = base.put_batch(ids, mask)
    loras = tuple(loras)
    logits, cache = _prefill(base.graphdef, s.top_k, t + max_new_tokens, base.state, ids_d, mask_d, loras,
                             jnp.asarray(keys), jnp.asarray(values), jnp.asarray(sees))

    # decoding: a row's memories change when its next token starts a chunk, retrieved with the chunk before
    current = refs[np.arange(b), np.maximum(n - 1, 0) // s.interval]  # [B, memories]: the last prompt chunk's
    eos, pad = jnp.asarray(base.eos_ids(), jnp.int32), jnp.int32(tok.pad_token_id)
    carry = (jnp.int32(0), logits, cache, jnp.asarray(np.arange(b) >= rows),
             jnp.full((b, max_new_tokens), tok.pad_token_id, jnp.int32))
    i, done = 0, np.arange(b) >= rows
    while i < max_new_tokens and not done.all():
        live = [r for r in range(rows) if not done[r]]
        # at step 0 the chunk before is the prompt's last, whose memories the row holds already
        starts = [r for r in live if i and (n[r] + i) % s.interval == 0]
        if starts:
            out = np.asarray(carry[4])
            for r in starts:
                seqs[r] = seqs[r][: n[r]] + out[r, :i].tolist()
            for r, hits in zip(starts, retrieve(starts, [text(r, n[r] + i - s.interval) for r in starts])):
                current[r] = -1
                current[r, :len(hits)] = hits
        keys, values, ok = bank.gather(current)
        stop = min([max_new_tokens] + [i + s.interval - (n[r] + i) % s.interval for r in live])
        carry = _decode(base.graphdef, s.top_k, base.state, carry, jnp.int32(stop), loras, jnp.asarray(keys),
                        jnp.asarray(values), jnp.asarray(ok), eos, pad)
        i, done = int(carry[0]), np.asarray(carry[3])
    return np.asarray(carry[4])
