"""DPO training-step time and peak memory: alignkit's trainer vs TRL's `DPOTrainer`, one JSON line.

Same tiny random Llama for both (saved once with `save_pretrained`, loaded by each system), same
word-level tokenizer, same synthetic preference rows (random tokens written as words, so both
systems tokenize them to exactly the same ids: prompt P tokens, chosen and rejected C tokens, plus
EOS), same batch size, float32, no gradient checkpointing, AdamW, sigmoid DPO with beta 0.1.
TRL runs with its default reference handling (`precompute_ref_log_probs=False`: a second model
held in memory and run forward every step) and, as extra keys, with `precompute_ref_log_probs=True`.

Each system runs in its own subprocess so memory peaks do not mix. Step time = time between the
starts of consecutive optimizer steps (data collation, forward, backward, clipping, optimizer step
and the trainer's own bookkeeping), median over `--steps` steps after `--warmup` steps. One-off
setup (tokenization, our reference log-prob caching, TRL's precompute) is excluded from step time;
our caching time is reported as `ours_ref_cache_s`. Peak memory: `ru_maxrss` of the subprocess minus
its resident set right after importing its libraries (torch / transformers / TRL), i.e. the
memory the run itself added: models, reference, activations, gradients, optimizer state.

    python benchmarks/train_step.py [--batch 8 --prompt-len 64 --completion-len 64 --steps 10 --threads 2]
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
    from alignkit.engine import trainer as T
    from alignkit.engine.config import load_config

    base = rss_mb()
    starts: list[float] = []
    cache_s: list[float] = []
    next_batches, cache = T._next_micro_batches, T.cache_reference_logps

    def timed_next(*a, **k):  # called once at the top of every optimizer step
        starts.append(time.perf_counter())
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
    steps = [b - a for a, b in zip(starts, starts[1:])][args.warmup:]
    return {"step_s": statistics.median(steps), "steps_s": steps, "ref_cache_s": sum(cache_s),
            "peak_mb": peak_rss_mb() - base}


def worker_trl(args: argparse.Namespace, root: Path, precompute: bool) -> dict:
    """Run TRL's `DPOTrainer` on the same model and rows and time its steps."""
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    base = rss_mb()
    starts: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            starts.append(time.perf_counter())

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
    t0 = time.perf_counter()
    trainer.train()
    setup_s = starts[0] - t0  # TRL precomputes reference log-probs inside train(), before step 1
    steps = [b - a for a, b in zip(starts, starts[1:])][args.warmup:]
    n_tokens = len(trainer.train_dataset[0]["prompt_ids"]), len(trainer.train_dataset[0]["chosen_ids"])
    return {"step_s": statistics.median(steps), "steps_s": steps, "setup_s": setup_s,
            "peak_mb": peak_rss_mb() - base, "prompt_completion_tokens": n_tokens}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

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
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-precompute-variant", action="store_true", help="skip TRL with precompute_ref_log_probs")
    p.add_argument("--worker", choices=["ours", "trl", "trl_precompute"], help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.passthrough = [a for a in argv if a != "--worker" and a not in ("ours", "trl", "trl_precompute")]
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        root = Path(args.root)
        if args.worker == "ours":
            res = worker_ours(args, root)
        else:
            res = worker_trl(args, root, precompute=args.worker == "trl_precompute")
        print(json.dumps(res))
        return

    with tempfile.TemporaryDirectory(prefix="ak_train_step_") as tmp:
        root = Path(tmp)
        work = build_workload(args, root)
        ours = run_worker("ours", args, root)
        trl = run_worker("trl", args, root)
        pre = None if args.no_precompute_variant else run_worker("trl_precompute", args, root)
    result = {
        "benchmark": "dpo_train_step",
        "ours_step_s": round(ours["step_s"], 4),
        "trl_step_s": round(trl["step_s"], 4),
        "step_time_ratio": round(ours["step_s"] / trl["step_s"], 3),
        "ours_peak_mb": round(ours["peak_mb"], 1),
        "trl_peak_mb": round(trl["peak_mb"], 1),
        "ours_ref_cache_s": round(ours["ref_cache_s"], 3),
        "trl_precompute_ref": False,
        "model": f"llama d={args.hidden} L={args.layers} heads={args.heads}/{args.kv_heads} V={args.vocab}",
        "params": work["params"],
        "batch_pairs": args.batch,
        "prompt_len": args.prompt_len,
        "completion_len": args.completion_len + 1,  # + EOS
        "trl_tokens_prompt_completion": trl["prompt_completion_tokens"],
        "dtype": "float32",
        "threads": args.threads,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "ours_steps_s": [round(s, 4) for s in ours["steps_s"]],
        "trl_steps_s": [round(s, 4) for s in trl["steps_s"]],
    }
    if pre is not None:
        result.update({
            "trl_precompute_step_s": round(pre["step_s"], 4),
            "trl_precompute_peak_mb": round(pre["peak_mb"], 1),
            "trl_precompute_setup_s": round(pre["setup_s"], 3),
            "step_time_ratio_vs_trl_precompute": round(ours["step_s"] / pre["step_s"], 3),
        })
    print(json.dumps(result))


if __name__ == "__main__":
    main()
