"""shine_jax against the official PyTorch SHINE (MuLabPKU/SHINE), side by side in one run. Not part of CI.

    .venv/bin/python benchmarks/vs_official.py --official /path/to/SHINE --official-python /path/to/venv/bin/python
        [--steps 5] [--warmup 1] [--mix-batches 4] [--mix-rounds 1] [--mix-scale S] [--skip-equal] [--skip-mix]

The official side runs in its own Python (torch==2.13.0, transformers==4.57.1, what its modules import) as a
subprocess of this script (this same file, ``--worker``), driven over a pipe, so the two sides never run at the same
time: each round runs one step of every side in turn, and the tables give medians. Pin the whole command to the
cores you want (``taskset -c 0``: one core, one thread per side); the worker inherits the affinity and sets torch's
thread count to it.

(a) **Equal shapes**: the train step at the speed issue's shapes (random Qwen3-style base, hidden 256, 6 layers,
    4 heads / 2 KV heads, head dim 64, intermediate 768, vocab 4096; LoRA rank 4, Meta LoRA 16, M2P 4 layers x 4
    heads; batch 4, evidence 256, conversation 64 with labels on its last 16, no padding). The official step is what
    ``meta_train_parallel.one_train_epoch`` does for one optimizer step: ``Metanetwork.forward`` (decorated with
    ``@torch.compile``; eager = ``torch.compiler.set_stance("force_eager")``), ``backward``, ``clip_grad_norm_`` per
    param group, AdamW with the DDP param groups (M2P weights / M2P biases and norms / Meta LoRA), scheduler step.
    Ours: ``jax.jit(make_train_step(...))`` of the same task, grad_accum 1.
(b) **Length mix**: useful (non-pad) evidence + conversation tokens per second on batches whose real lengths follow a
    paper-like mix (evidence 100-1,150 tokens, conversation 50-600, uniform), scaled to fit a CPU: by default so that
    the maxima are (a)'s 256 / 64 (same spread of lengths; both sides reuse the step compiled for (a)), or by
    ``--mix-scale``; the last quarter of each conversation is labelled. The official collators pad every row to the configured
    ``max_length`` (``padding="max_length"``, utils/mydataset.py): that is the ``max_length`` row, compiled, the
    longest lengths of the mix as ``max_length``. The ``longest`` row pads each batch only to its longest row (what a
    dynamic-padding collator would do; not what the official code does), eager and compiled (``torch.compile``
    recompiles per new shape, then goes dynamic; the warm-up pass over all batches absorbs that). With
    ``data.context_length`` / ``data.conversation_length`` set to the mix's maxima, ours is measured three ways:
    padded like ``max_length``; each batch cut to one of ``--buckets`` length buckets (``data.length_buckets``); and
    the mix's rows regrouped into batches of similar length first (``data.length_grouping`` over all the batches),
    then cut to buckets. Our new shapes compile in the warm-up pass too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

# the speed issue's shapes
SHAPE = dict(vocab=4096, hidden=256, layers=6, heads=4, kv_heads=2, head_dim=64, intermediate=768, lora_rank=4,
             metalora_rank=16, m2p_layers=4, m2p_heads=4, batch=4, evidence=256, conversation=64, labelled=16)
PAPER_MIX = dict(evidence=(100, 1150), conversation=(50, 600))  # token lengths, uniform
LABEL_SHARE = 0.25  # of each conversation's real tokens, at its end (answers end a conversation)
IGNORE = -100


def _die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


# ------------------------------------------------------------------------------------------------ batches (numpy)
def make_batch(rng, b, tc, tq, ev_lens, conv_lens, n_labelled=None):
    """Left-padded batch (the official collators and our pipelines both pad on the left); labels on the last
    ``n_labelled`` (or LABEL_SHARE of the) real conversation tokens."""
    import numpy as np

    out = {"evidence_ids": np.zeros((b, tc), np.int64), "evidence_mask": np.zeros((b, tc), np.int64),
           "input_ids": np.zeros((b, tq), np.int64), "attention_mask": np.zeros((b, tq), np.int64),
           "labels": np.full((b, tq), IGNORE, np.int64)}
    for i in range(b):
        ne, nq = int(ev_lens[i]), int(conv_lens[i])
        out["evidence_ids"][i, tc - ne:] = rng.integers(8, SHAPE["vocab"], ne)
        out["evidence_mask"][i, tc - ne:] = 1
        ids = rng.integers(8, SHAPE["vocab"], nq)
        out["input_ids"][i, tq - nq:] = ids
        out["attention_mask"][i, tq - nq:] = 1
        k = n_labelled if n_labelled is not None else max(1, round(nq * LABEL_SHARE))
        out["labels"][i, tq - k:] = ids[nq - k:]
    return out


def mix_scales(scale):
    """(evidence scale, conversation scale): ``scale`` for both, or (None) the scales that make the mix's maxima the
    equal-shape case's lengths (256 / 1,150 and 64 / 600: the same spread of lengths, and both sides reuse the
    step they compiled for (a))."""
    if scale:
        return scale, scale
    return SHAPE["evidence"] / PAPER_MIX["evidence"][1], SHAPE["conversation"] / PAPER_MIX["conversation"][1]


def mix_batches(n_batches, scale, seed=1):
    """Real lengths of ``n_batches`` batches drawn from the scaled paper-like mix; returns (batches padded to the
    mix's maxima, (min, max) evidence lengths, (min, max) conversation lengths)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b = SHAPE["batch"]
    se, sq = mix_scales(scale)
    lo_e, hi_e = (max(1, round(x * se)) for x in PAPER_MIX["evidence"])
    lo_q, hi_q = (max(4, round(x * sq)) for x in PAPER_MIX["conversation"])
    batches = []
    for _ in range(n_batches):
        ev = rng.integers(lo_e, hi_e + 1, b)
        conv = rng.integers(lo_q, hi_q + 1, b)
        batches.append(make_batch(rng, b, hi_e, hi_q, ev, conv))
    return batches, (lo_e, hi_e), (lo_q, hi_q)


def crop_to_longest(batch):
    """The same rows left-padded only to the batch's longest row."""
    ne = int(batch["evidence_mask"].sum(1).max())
    nq = int(batch["attention_mask"].sum(1).max())
    out = {}
    for k, v in batch.items():
        out[k] = v[:, v.shape[1] - (ne if k.startswith("evidence") else nq):]
    return out


def useful_tokens(batch) -> int:
    return int(batch["evidence_mask"].sum() + batch["attention_mask"].sum())


# ------------------------------------------------------------------------------------------------ official worker
class _NS(dict):
    """An attribute dict: the official code reads its (OmegaConf) config with attributes and ``**`` alike."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


def worker_main(official: str) -> None:
    """Runs in the official venv. Reads JSON commands on stdin, answers one JSON line each on stdout."""
    import numpy as np
    import torch

    sys.path.insert(0, official)
    from LoraQwen import LoraQwen3ForCausalLM, Qwen3Config  # noqa: I001  (the official modules)
    from metanetwork_family import Metanetwork
    from transformers import get_linear_schedule_with_warmup
    from utils.myfreeze import freeze
    from utils.myloradict import iter_learnable_tensors

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the official code prints must not break the protocol

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")
        out.flush()

    s = SHAPE
    h, nl, r = s["hidden"], s["layers"], s["lora_rank"]
    num_mem = r * (7 * h + 2 * s["heads"] * s["head_dim"] + 2 * s["kv_heads"] * s["head_dim"] + 3 * s["intermediate"]) // h
    enc = dict(d_model=h, nhead=s["m2p_heads"], dim_feedforward=2 * h, dropout=0, activation="gelu",
               layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True)
    cfg = _NS(num_layers=nl, num_mem_token=num_mem, hidden_size=h,
              model=_NS(lora_r=r, metalora_r=s["metalora_rank"]), optim=_NS(adapter_reg=0.0),
              metanetwork=_NS(type="transformer", method="rl", transformer_cfg=_NS(
                  encoder_cfg=_NS(enc), couple_encoder_cfg=_NS(enc), layer_transformer_first=True, mean_pool_size=1,
                  num_layers=s["m2p_layers"], couple_num_layers=0, scale=0.001)))
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=s["vocab"], hidden_size=h, intermediate_size=s["intermediate"],
                         num_hidden_layers=nl, num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                         head_dim=s["head_dim"], tie_word_embeddings=True, max_position_embeddings=4096,
                         rope_theta=1e6, rms_norm_eps=1e-6)
    config.num_mem_token = num_mem
    metamodel = LoraQwen3ForCausalLM(config)
    metamodel.reset_mem_tokens()
    assert metamodel.lora_params_numel(r) == nl * num_mem * h
    metanetwork = Metanetwork(metamodel, cfg, metamodel.lora_params_numel(r))
    metanetwork.train()
    freeze(metamodel)
    metalora = metamodel.init_lora_dict(s["metalora_rank"], scale=0.001, device=torch.device("cpu"))
    metamodel.config.use_cache = False
    # the param groups of meta_train_parallel.main under DDP (names there start with "module."): the frozen
    # base and the memory tokens are left out (the spec, section 7)
    no_decay = ["bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "norm1", "norm2"]
    named = [(n, p) for n, p in metanetwork.named_parameters() if not n.startswith("metamodel")]
    groups = [{"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
              {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
              {"params": list(iter_learnable_tensors(metalora)), "weight_decay": 0.01}]
    optimizer = torch.optim.AdamW(groups, lr=5e-5)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=200, num_training_steps=100000)
    batches = {}

    def step(b, eager):
        ctx = torch.compiler.set_stance("force_eager") if eager else torch.compiler.set_stance("default")
        with ctx:
            outputs = metanetwork(input_ids=b["input_ids"], input_attention_mask=b["attention_mask"],
                                  evidence_ids=b["evidence_ids"], evidence_attention_mask=b["evidence_mask"],
                                  labels=b["labels"], metalora=metalora, use_gradient_checkpoint=False)
            loss = outputs.loss.item()
            backward_loss = outputs.loss + outputs.reg_loss
            if (b["labels"] != IGNORE).sum().item() > 0 and np.isfinite(loss):
                backward_loss.backward()
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        return loss

    import transformers

    reply(ok=True, torch=torch.__version__, transformers=transformers.__version__, threads=threads,
          attn=getattr(metamodel.config, "_attn_implementation", "?"), num_mem_token=num_mem)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "load":  # an .npz of batches: name -> arrays with a "name/" key prefix
                data = np.load(cmd["path"])
                for key in data.files:
                    name, field = key.split("/")
                    batches.setdefault(name, {})[field] = torch.from_numpy(data[key])
                reply(ok=True, n=len(batches))
            elif cmd["op"] == "step":
                t = time.perf_counter()
                loss = step(batches[cmd["batch"]], cmd["variant"] == "eager")
                reply(ok=True, s=time.perf_counter() - t, loss=loss)
            elif cmd["op"] == "peak":
                a = torch.randn(cmd["n"], cmd["n"])
                a @ a
                t = time.perf_counter()
                for _ in range(cmd["reps"]):
                    a @ a
                reply(ok=True, flops=2 * cmd["n"] ** 3 * cmd["reps"] / (time.perf_counter() - t))
            elif cmd["op"] == "quit":
                reply(ok=True)
                return
        except Exception as e:  # noqa: BLE001  (reported to the parent, which stops)
            import traceback

            traceback.print_exc()
            reply(ok=False, error=f"{type(e).__name__}: {e}")


class Official:
    """The official side: a worker subprocess in the official venv."""

    def __init__(self, python: str, checkout: str, log_path: str):
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), "--worker", "--official", checkout],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.log_path = log_path
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            tail = open(self.log_path).read()[-3000:]
            _die(f"the official worker exited (rc {self.proc.poll()}); its log ends:\n{tail}")
        msg = json.loads(line)
        if not msg.get("ok"):
            _die(f"the official worker failed: {msg.get('error')} (log: {self.log_path})")
        return msg

    def call(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.call(op="quit")
        finally:
            self.proc.wait(timeout=60)
            self.log.close()


def check_official(checkout: str | None, python: str | None) -> None:
    if not checkout:
        _die("--official PATH is required: a local checkout of MuLabPKU/SHINE (e.g. `git clone` it, or "
             "`git --git-dir=<mirror>/repo archive HEAD | tar -x -C DIR`)")
    if not os.path.isdir(checkout):
        _die(f"--official {checkout}: no such directory")
    missing = [f for f in ("LoraQwen.py", "metanetwork_family.py", "utils/myloradict.py", "utils/myfreeze.py")
               if not os.path.isfile(os.path.join(checkout, f))]
    if missing:
        _die(f"--official {checkout} is not a checkout of MuLabPKU/SHINE (missing {', '.join(missing)})")
    if not python:
        _die("--official-python PATH is required: the python of a venv with torch==2.13.0 and transformers==4.57.1")
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        _die(f"--official-python {python}: not an executable file")
    probe = subprocess.run([python, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        _die(f"--official-python {python} cannot import torch and transformers ({last}); create it with "
             f"`python3.11 -m venv V && V/bin/pip install torch==2.13.0 transformers==4.57.1 numpy`")


# ------------------------------------------------------------------------------------------------ our side
def build_ours(evidence: int, conversation: int):
    import jax

    from shine_jax import sharding as shd
    from shine_jax.base_model import BaseModel
    from shine_jax.train import loop
    from shine_jax.train import optimizer as optim
    from shine_jax.train.config import load_config, model_config
    from shine_jax.train.step import init_state, make_train_step

    s = SHAPE
    cfg = load_config("configs/tiny.py:ift_mqa", [
        f"model.hidden_size={s['hidden']}", f"model.intermediate_size={s['intermediate']}",
        f"model.num_layers={s['layers']}", f"model.num_heads={s['heads']}", f"model.num_kv_heads={s['kv_heads']}",
        f"model.head_dim={s['head_dim']}", f"model.vocab_size={s['vocab']}", f"shine.lora_rank={s['lora_rank']}",
        f"shine.metalora_rank={s['metalora_rank']}", f"shine.m2p.num_layers={s['m2p_layers']}",
        f"shine.m2p.num_heads={s['m2p_heads']}", f"batch_size={s['batch']}", "grad_accum=1",
        f"data.context_length={evidence}", f"data.conversation_length={conversation}"])
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    base = BaseModel.random(model_config(cfg, s["vocab"]), seed=0)
    task = loop.shine_task(cfg, base, mesh, workdir=None)
    tx = optim.make_optimizer(cfg.optim, cfg.steps, task.labels, task.lr_mults)
    state = init_state(task.params, tx)
    step = jax.jit(make_train_step(task.loss_fn, tx))
    keys = {"evidence_ids": "evidence_ids", "evidence_mask": "evidence_mask", "input_ids": "input_ids",
            "attention_mask": "attention_mask", "labels": "labels"}

    def run(batch):  # the state is not carried over: every step starts from the same state, like the official
        b = {k: jax.numpy.asarray(batch[v][None].astype("int32")) for k, v in keys.items()}
        t = time.perf_counter()
        jax.block_until_ready(step(state, task.frozen, b)[1]["loss"])
        return time.perf_counter() - t

    return run, task.step_flops, cfg


def make_jax_peak(n=2048, reps=3):
    """A function measuring JAX's float32 matmul FLOP/s (n^3, mean of ``reps``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))

    def peak():
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a)
        jax.block_until_ready(out)
        return 2 * n**3 * reps / (time.perf_counter() - t)

    return peak


# ------------------------------------------------------------------------------------------------ main
def command_line() -> str:
    cpus = sorted(os.sched_getaffinity(0))
    prefix = f"taskset -c {','.join(map(str, cpus))} " if len(cpus) < (os.cpu_count() or len(cpus)) else ""
    return prefix + " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/vs_official.py", *sys.argv[1:]])


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", help="a local checkout of MuLabPKU/SHINE")
    p.add_argument("--official-python", help="python of a venv with torch==2.13.0 and transformers==4.57.1")
    p.add_argument("--steps", type=int, default=5, help="timed steps per side at equal shapes (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per side after compiling")
    p.add_argument("--mix-batches", type=int, default=4, help="batches of the length mix")
    p.add_argument("--mix-rounds", type=int, default=1, help="timed passes over the mix batches (median per batch)")
    p.add_argument("--mix-scale", type=float, default=None,
                   help="scale of the paper-like length mix (default: maxima = the equal shapes, 256 / 64)")
    p.add_argument("--mix-longest-compiled", action="store_true",
                   help="also time the official compiled on batches padded to their longest row (a compile per shape)")
    p.add_argument("--jax-cache", default=os.path.join(tempfile.gettempdir(), "shine_jax_vs_official_xla_cache"),
                   help="JAX's persistent compilation cache ('' for none); torch.compile keeps its own on-disk cache")
    p.add_argument("--buckets", type=int, default=4, help="data.length_buckets of our bucketed sides of (b)")
    p.add_argument("--skip-equal", action="store_true")
    p.add_argument("--skip-mix", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker_main(args.official)
    check_official(args.official, args.official_python)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/ paths are relative
    import jax
    import numpy as np

    if args.jax_cache:
        jax.config.update("jax_compilation_cache_dir", args.jax_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    started = time.time()
    tmp = tempfile.mkdtemp(prefix="vs_official_")
    official = Official(args.official_python, os.path.abspath(args.official), os.path.join(tmp, "official.log"))
    info = official.info
    print(f"official: torch {info['torch']}, transformers {info['transformers']}, {info['threads']} thread(s), "
          f"attention {info['attn']}, M={info['num_mem_token']}; ours: jax {jax.__version__}, "
          f"{jax.devices()[0].platform}; cpus {sorted(os.sched_getaffinity(0))}", flush=True)
    rows_a, rows_b = [], []
    jax_peak = make_jax_peak()
    peaks = {"jax": [], "torch": []}

    def measure_peaks():  # the machine's load changes: measured again in every round of (a), medians reported
        peaks["jax"].append(jax_peak())
        peaks["torch"].append(official.call(op="peak", n=2048, reps=3)["flops"])

    measure_peaks()

    if not args.skip_equal:
        s = SHAPE
        rng = np.random.default_rng(0)
        b = make_batch(rng, s["batch"], s["evidence"], s["conversation"], [s["evidence"]] * s["batch"],
                       [s["conversation"]] * s["batch"], n_labelled=s["labelled"])
        np.savez(os.path.join(tmp, "equal.npz"), **{f"equal/{k}": v for k, v in b.items()})
        official.call(op="load", path=os.path.join(tmp, "equal.npz"))
        t0 = time.perf_counter()
        ours, flops, _ = build_ours(s["evidence"], s["conversation"])
        ours_equal = ours
        ours(b)
        compile_s = {"ours": time.perf_counter() - t0}  # building the task, tracing and compiling, one step
        for v in ("compiled", "eager"):
            compile_s[v] = official.call(op="step", batch="equal", variant=v)["s"]
        for _ in range(args.warmup):
            ours(b)
            for v in ("compiled", "eager"):
                official.call(op="step", batch="equal", variant=v)
        times = {"ours": [], "compiled": [], "eager": []}
        for _ in range(args.steps):
            times["ours"].append(ours(b))
            for v in ("compiled", "eager"):
                times[v].append(official.call(op="step", batch="equal", variant=v)["s"])
            measure_peaks()
        med = {k: median(v) for k, v in times.items()}
        for name, key in (("official, `torch.compile`", "compiled"), ("official, eager", "eager"),
                          ("shine_jax, `jax.jit`", "ours")):
            rows_a.append((name, med[key], flops / med[key], compile_s[key]))
        print(f"(a) done in {time.time() - started:.0f} s", flush=True)

    if not args.skip_mix:
        batches, (lo_e, tc), (lo_q, tq) = mix_batches(args.mix_batches, args.mix_scale)
        arrays = {}
        for i, bt in enumerate(batches):
            arrays.update({f"max{i}/{k}": v for k, v in bt.items()})
            arrays.update({f"longest{i}/{k}": v for k, v in crop_to_longest(bt).items()})
        np.savez(os.path.join(tmp, "mix.npz"), **arrays)
        official.call(op="load", path=os.path.join(tmp, "mix.npz"))
        if rows_a and (tc, tq) == (SHAPE["evidence"], SHAPE["conversation"]):
            ours = ours_equal  # the step compiled for (a); the official's compiled graph is reused likewise
        else:
            ours, _, _ = build_ours(tc, tq)
        import grain

        from shine_jax.data import buckets as bk

        grain_rows = grain.MapDataset.source([{k: v[r] for k, v in bt.items()} for bt in batches
                                              for r in range(SHAPE["batch"])])
        grouped = bk.LengthGroupedBatches(grain_rows, SHAPE["batch"], len(batches), seed=0).dataset()
        bucketed = [bk.trim_batch(bt, args.buckets) for bt in batches]
        grouped = [bk.trim_batch(grouped[i], args.buckets) for i in range(len(batches))]
        sides = {"ours": lambda i: ours(batches[i]),
                 "ours, buckets": lambda i: ours(bucketed[i]),
                 "ours, grouped + buckets": lambda i: ours(grouped[i]),
                 "max_length, compiled": lambda i: official.call(op="step", batch=f"max{i}", variant="compiled")["s"],
                 "longest, eager": lambda i: official.call(op="step", batch=f"longest{i}", variant="eager")["s"]}
        if args.mix_longest_compiled:
            sides["longest, compiled"] = lambda i: official.call(op="step", batch=f"longest{i}",
                                                                 variant="compiled")["s"]
        for i in range(len(batches)):  # warm-up: compiles every shape
            for fn in sides.values():
                fn(i)
        times = {k: [[] for _ in batches] for k in sides}
        for _ in range(args.mix_rounds):
            for i in range(len(batches)):
                for k, fn in sides.items():
                    times[k][i].append(fn(i))
        tokens = sum(useful_tokens(bt) for bt in batches)
        padded_max = len(batches) * SHAPE["batch"] * (tc + tq)
        padded_longest = sum(c["evidence_ids"].size + c["input_ids"].size for c in map(crop_to_longest, batches))
        total = {k: sum(median(t) for t in v) for k, v in times.items()}
        fed = {"ours, buckets": sum(b["evidence_ids"].size + b["input_ids"].size for b in bucketed),
               "ours, grouped + buckets": sum(b["evidence_ids"].size + b["input_ids"].size for b in grouped)}
        names = {"ours": "shine_jax, `jax.jit` (pads to the mix maxima)",
                 "ours, buckets": f"shine_jax, `data.length_buckets={args.buckets}`",
                 "ours, grouped + buckets": f"shine_jax, `data.length_grouping={len(batches)}` + "
                                            f"`length_buckets={args.buckets}`"}
        ours_keys = list(names)
        for k in [k for k in sides if k not in ours_keys] + ours_keys:
            pad = padded_longest if k.startswith("longest") else fed.get(k, padded_max)
            name = names.get(k, f"official, {k}")
            rows_b.append((name, total[k] / len(batches), tokens / total[k], pad, total["ours"]))
        se, sq = mix_scales(args.mix_scale)
        mix_desc = (f"{len(batches)} batches of {SHAPE['batch']} rows, real lengths uniform in evidence {lo_e}-{tc}, "
                    f"conversation {lo_q}-{tq} tokens (the paper-like mix 100-1,150 / 50-600 scaled by {se:.3f} / "
                    f"{sq:.3f}), the last quarter of each conversation labelled; {tokens} useful tokens")
    measure_peaks()
    official.close()
    pk = {k: median(v) for k, v in peaks.items()}
    spread = {k: f"{min(v) / 1e9:.0f}-{max(v) / 1e9:.0f}" for k, v in peaks.items()}

    print(f"\nmeasured {time.strftime('%Y-%m-%d')}, {time.time() - started:.0f} s in all; float32 matmul peak "
          f"(2048^3, median of {len(peaks['jax'])} measurements between the rounds): JAX {pk['jax'] / 1e9:.0f} GFLOP/s "
          f"(range {spread['jax']}), torch {pk['torch'] / 1e9:.0f} GFLOP/s (range {spread['torch']})")
    print(f"command: {command_line()}\n")
    if rows_a:
        print(f"(a) train step at equal shapes (medians of {args.steps} alternating steps after {args.warmup} warm-up)\n")
        print("| side | step | model GFLOP/s | ours / this side (speed) | first step (incl. compile) |")
        print("|---|---:|---:|---:|---:|")
        for name, t, fl, c in rows_a:
            ratio = t / rows_a[-1][1]
            print(f"| {name} | {t * 1e3:.0f} ms | {fl / 1e9:.1f} | {ratio:.2f}x | {c:.1f} s |")
        print(f"\nmodel FLOPs per step {rows_a[0][2] * rows_a[0][1] / 1e9:.1f} G; model FLOP/s / matmul peak: ours "
              f"{rows_a[-1][2] / pk['jax']:.2f} (of JAX's), official compiled {rows_a[0][2] / pk['torch']:.2f} "
              f"(of torch's)\n")
    if rows_b:
        print(f"(b) length mix: {mix_desc}; per batch the median of {args.mix_rounds} pass(es) after a warm-up pass\n")
        print("| side (padding) | mean step | useful tokens/s | padded tokens | ours, grouped + buckets / this side |")
        print("|---|---:|---:|---:|---:|")
        ours_tps = rows_b[-1][2]
        for name, t, tps, pad, _ in rows_b:
            print(f"| {name} | {t * 1e3:.0f} ms | {tps:.0f} | {pad} | {ours_tps / tps:.2f}x |")
        print()


if __name__ == "__main__":
    main()
