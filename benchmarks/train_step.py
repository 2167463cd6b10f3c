"""DPO training-step time and peak memory: alignkit's trainer vs TRL's `DPOTrainer`, one JSON line.

Same tiny random Llama for both (saved once with `save_pretrained`, loaded by each system), same
word-level tokenizer, same synthetic preference rows (random tokens written as words, so both
systems tokenize them to exactly the same ids: prompt P tokens, chosen and rejected C tokens, plus
EOS), same batch size, float32, no gradient checkpointing, AdamW, sigmoid DPO with beta 0.1.
TRL runs with its default reference handling (`precompute_ref_log_probs=False`: a second model
held in memory and run forward every step) and, as extra keys, with `precompute_ref_log_probs=True`.

Each system runs in its own subprocess so memory peaks do not mix. Step time = time between the
starts of consecutive optimizer steps (data collation, forward, backward, clipping, optimizer step
and the trainer's own bookkeeping), median over `--steps` steps after `--warmup` steps, pooled over
`--rounds` alternating runs (ours, TRL, ours, TRL, ...) so that load from other processes on a
shared machine falls on both. Wall time is the headline; process CPU time per step
(`*_step_cpu_s`, all threads) is reported beside it because it is less sensitive to such load.
One-off setup (tokenization, our reference log-prob caching, TRL's precompute) is excluded from
step time and reported as `ours_ref_cache_s` / `trl_precompute_ref_s`.

Peak memory: `ru_maxrss` of the subprocess minus its resident set right after importing its
libraries (torch, transformers, datasets and the Llama modelling code in both; then alignkit's
trainer or TRL), i.e. the memory the run itself added: models, reference, activations, gradients,
optimizer state.

Note on TRL's CPU path: TRL's fused LM head scores only the completion positions on devices with
Triton, but on other devices (CPU included) it scores every position; alignkit always projects
only the completion positions. The `trl_compact_head_*` keys rerun TRL's default setup with that
compaction forced on (its torch kernels, as on CPU), the closest like-for-like comparison.

    python benchmarks/train_step.py [--batch 8 --prompt-len 64 --completion-len 64 --steps 8 --rounds 2 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def import_common_libraries() -> None:
    """Import the libraries both systems load, so the memory baseline after them is comparable."""
    import datasets  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """High-water resident set size of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# Workload (built once by the parent)
# --------------------------------------------------------------------------------------------

def build_workload(args: argparse.Namespace, root: Path) -> dict:
    """Tiny random Llama + word-level tokenizer under root/model, preference rows in root/prefs.jsonl."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {s: i for i, s in enumerate(specials)}
    for i in range(args.vocab - len(specials)):
        vocab[f"w{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                     bos_token="[BOS]", eos_token="[EOS]")
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=1024,
                      pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id,
                      eos_token_id=hf_tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(root / "model")
    hf_tok.save_pretrained(root / "model")

    rng = random.Random(0)
    words = lambda n: " ".join(f"w{rng.randrange(args.vocab - len(specials))}" for _ in range(n))  # noqa: E731
    n_rows = args.batch * (args.warmup + args.steps + 2)
    with open(root / "prefs.jsonl", "w") as f:
        for _ in range(n_rows):
            # A leading space on completions: TRL tokenizes prompt + completion as one string.
            f.write(json.dumps({"prompt": words(args.prompt_len), "chosen": " " + words(args.completion_len),
                                "rejected": " " + words(args.completion_len)}) + "\n")
    return {"params": n_params, "rows": n_rows}


# --------------------------------------------------------------------------------------------
# Workers (one subprocess each)
# --------------------------------------------------------------------------------------------

def worker_ours(args: argparse.Namespace, root: Path) -> dict:
    """Run alignkit's `train()` and time its steps."""
    import torch

    torch.set_num_threads(args.threads)
    import_common_libraries()
    from alignkit.engine import trainer as T
    from alignkit.engine.config import load_config

    base = rss_mb()
    starts: list[float] = []
    cache_s: list[float] = []
    next_batches, cache = T._next_micro_batches, T.cache_reference_logps

    def timed_next(*a, **k):  # called once at the top of every optimizer step
        starts.append((time.perf_counter(), time.process_time()))
        return next_batches(*a, **k)

    def timed_cache(*a, **k):
        t0 = time.perf_counter()
        cache(*a, **k)
        cache_s.append(time.perf_counter() - t0)

    T._next_micro_batches, T.cache_reference_logps = timed_next, timed_cache
    cfg = load_config(None, [
        "algo.name=dpo", "algo.beta=0.1", f"model.path={root / 'model'}", "model.dtype=float32", "model.device=cpu",
        f"data.train={root / 'prefs.jsonl'}", "data.max_length=1024", "data.max_prompt_length=512",
        f"train.batch_size={args.batch}", f"train.max_steps={args.warmup + args.steps + 1}", "train.lr=1e-6",
        "train.mixed_precision='no'", f"train.eval_batch_size={args.batch}", f"output.dir={root / 'ours_run'}",
        "output.log_every=1000000", "output.tensorboard=false", "output.progress=false", "output.save_final=false",
    ])
    T.train(cfg)
    return {**step_times(starts, args.warmup), "ref_cache_s": sum(cache_s), "peak_mb": peak_rss_mb() - base}


def worker_trl(args: argparse.Namespace, root: Path, precompute: bool, compact: bool = False) -> dict:
    """Run TRL's `DPOTrainer` on the same model and rows and time its steps.

    compact=True makes TRL's fused LM head score only completion positions, as it does on CUDA
    with Triton (its torch tile kernels are used either way): TRL at its best on this hardware.
    """
    import torch

    torch.set_num_threads(args.threads)
    import_common_libraries()
    import datasets
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    if compact:
        trl_utils._use_triton = lambda device: True  # only gates compaction in utils; kernels keep their own check

    base = rss_mb()
    starts: list[float] = []

    precompute_s: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            starts.append((time.perf_counter(), time.process_time()))

    precompute_fn = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **k):  # runs inside DPOTrainer.__init__
        t0 = time.perf_counter()
        out = precompute_fn(self, *a, **k)
        precompute_s.append(time.perf_counter() - t0)
        return out

    DPOTrainer._precompute_ref_logps = timed_precompute

    tok = AutoTokenizer.from_pretrained(root / "model")
    model = AutoModelForCausalLM.from_pretrained(root / "model", dtype=torch.float32)
    ds = datasets.load_dataset("json", data_files=str(root / "prefs.jsonl"), split="train")
    cfg = DPOConfig(
        output_dir=str(root / f"trl_run_{int(precompute)}"), per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps + 1, learning_rate=1e-6, beta=0.1, loss_type=["sigmoid"],
        max_length=1024, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,
        precompute_ref_log_probs=precompute, precompute_ref_batch_size=args.batch, logging_steps=1000000,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=42,
        lr_scheduler_type="cosine", max_grad_norm=1.0, optim="adamw_torch",
    )
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, callbacks=[StepClock()])
    trainer.train()
    n_tokens = len(trainer.train_dataset[0]["prompt_ids"]), len(trainer.train_dataset[0]["chosen_ids"])
    return {**step_times(starts, args.warmup), "ref_cache_s": sum(precompute_s),
            "peak_mb": peak_rss_mb() - base, "prompt_completion_tokens": n_tokens}


def step_times(starts: list[tuple[float, float]], warmup: int) -> dict:
    """Per-step wall and process-CPU seconds from the (wall, cpu) clock at each step's start."""
    wall = [b[0] - a[0] for a, b in zip(starts, starts[1:])][warmup:]
    cpu = [b[1] - a[1] for a, b in zip(starts, starts[1:])][warmup:]
    return {"wall": wall, "cpu": cpu}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

# ours; TRL default; TRL with precompute_ref_log_probs=True; TRL default with its LM head compacted.
SYSTEMS = ("ours", "trl", "trl_precompute", "trl_compact")


def run_worker(system: str, args: argparse.Namespace, root: Path) -> dict:
    """Run one system in a fresh interpreter and return its JSON result."""
    cmd = [sys.executable, __file__, "--worker", system, "--root", str(root)] + args.passthrough
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{system} worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="preference pairs per step (2x rows per forward)")
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--completion-len", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    # One thread by default: on a shared 2-core machine, multi-threaded BLAS under contention makes
    # step times erratic for both systems; pass --threads N on a quiet machine.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="alternating runs of each system (steps pool across rounds)")
    p.add_argument("--no-variants", action="store_true",
                   help="only ours and TRL's default (skip TRL with precompute / compact LM head)")
    p.add_argument("--worker", choices=list(SYSTEMS), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.passthrough = list(argv)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        root = Path(args.root)
        if args.worker == "ours":
            res = worker_ours(args, root)
        else:
            res = worker_trl(args, root, precompute=args.worker == "trl_precompute", compact=args.worker == "trl_compact")
        print(json.dumps(res))
        return

    runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    with tempfile.TemporaryDirectory(prefix="ak_train_step_") as tmp:
        root = Path(tmp)
        work = build_workload(args, root)
        # Alternate the systems so slow phases of a shared machine hit both alike.
        for _ in range(args.rounds):
            for system in ("ours", "trl") if args.no_variants else SYSTEMS:
                runs[system].append(run_worker(system, args, root))

    def med(system: str, clock: str = "wall") -> float:
        return statistics.median([t for r in runs[system] for t in r[clock]])

    def peak(system: str) -> float:
        return max(r["peak_mb"] for r in runs[system])

    ours, trl = runs["ours"], runs["trl"]
    result = {
        "benchmark": "dpo_train_step",
        "ours_step_s": round(med("ours"), 4),
        "trl_step_s": round(med("trl"), 4),
        "step_time_ratio": round(med("ours") / med("trl"), 3),
        "ours_peak_mb": round(peak("ours"), 1),
        "trl_peak_mb": round(peak("trl"), 1),
        "ours_ref_cache_s": round(statistics.median(r["ref_cache_s"] for r in ours), 3),
        "trl_precompute_ref": False,
        "ours_step_cpu_s": round(med("ours", "cpu"), 4),
        "trl_step_cpu_s": round(med("trl", "cpu"), 4),
        "step_cpu_ratio": round(med("ours", "cpu") / med("trl", "cpu"), 3),
        "model": f"llama d={args.hidden} L={args.layers} heads={args.heads}/{args.kv_heads} "
                 f"ffn={args.hidden * 11 // 4} V={args.vocab} untied",
        "params": work["params"],
        "batch_pairs": args.batch,
        "prompt_len": args.prompt_len,
        "completion_len": args.completion_len + 1,  # + EOS
        "trl_tokens_prompt_completion": trl[0]["prompt_completion_tokens"],
        "dtype": "float32",
        "threads": args.threads,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps * args.rounds,
        "rounds": args.rounds,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "ours_steps_s": [round(t, 3) for r in ours for t in r["wall"]],
        "trl_steps_s": [round(t, 3) for r in trl for t in r["wall"]],
    }
    if runs["trl_precompute"]:
        result.update({
            "trl_precompute_step_s": round(med("trl_precompute"), 4),
            "trl_precompute_step_cpu_s": round(med("trl_precompute", "cpu"), 4),
            "trl_precompute_peak_mb": round(peak("trl_precompute"), 1),
            "trl_precompute_ref_s": round(statistics.median(r["ref_cache_s"] for r in runs["trl_precompute"]), 3),
            "step_time_ratio_vs_trl_precompute": round(med("ours") / med("trl_precompute"), 3),
        })
    if runs["trl_compact"]:
        result.update({
            "trl_compact_head_step_s": round(med("trl_compact"), 4),
            "trl_compact_head_step_cpu_s": round(med("trl_compact", "cpu"), 4),
            "trl_compact_head_peak_mb": round(peak("trl_compact"), 1),
            "step_time_ratio_vs_trl_compact_head": round(med("ours") / med("trl_compact"), 3),
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
