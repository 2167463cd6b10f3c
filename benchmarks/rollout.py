"""Rollout throughput: alignkit's Sampler vs transformers `generate` vs `generate_batch`, one JSON line.

Same tiny random Llama (GQA), same group workload for all three systems: P prompts of varied
length (L/2..L tokens), G samples each, temperature 1, completions ending on a set of stop
tokens. The random model's next-token distribution is near uniform, so each step emits a stop
token with probability ~ k/V: completion lengths are geometric (mean ~ V/k, capped at
max_new_tokens) and vary per sample as in RL. The sampled tokens differ between systems (each
has its own RNG) so we count, for every system, only the real tokens it produced (up to and
including the stop token; `generate`'s padding after a finished row is not counted) and divide
by its wall time. Also: our model FLOP/s (2 * matmul params * tokens + attention) as a fraction of
a `torch.mm` peak measured in the same run (before the first round and after every round, the
highest counts: a VM's speed drifts, and a peak taken in a slow moment would flatter the fraction).

    python benchmarks/rollout.py [--prompts 16 --group 8 --prompt-len 64 --max-new 256 --threads 2]
    python benchmarks/rollout.py --device cuda   # model, all three systems and the peak on the GPU

Our sampler runs twice: with `Sampler(compile=True)` (the headline `ours_*` figures; its one-off
warm-up, which includes compiling, is reported as `ours_warmup_s`) and eager (`ours_eager_*`).

OpenMP threads: torch's default (spin, then sleep) is what users get and is best on an idle
machine; on one shared with other jobs spinning threads collapse when cores are oversubscribed
(small GEMMs 15-30x slower on 2 threads than on 1). `--omp-passive` re-runs the script with
OMP_WAIT_POLICY=PASSIVE (no spinning, but every parallel op pays a thread wake-up). Either way it
applies to all three systems alike. Read `load_avg_start`/`load_avg_end`: the machine may be busy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def build_model(args):
    """Tiny random Llama: the shapes of a small RL policy that is still CPU-trainable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
                      bos_token_id=0, eos_token_id=args.vocab - 1, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval().to(args.device)


def gemm_peak_gflops(device: str = "cpu", sizes=(1024, 1536), reps: int = 20) -> float:
    """Best-of fp32 `torch.mm` GFLOP/s on this machine (the current thread count) or GPU (TF32 as torch's default: off).

    Square products of a few sizes, the fastest call counts: the peak is what the machine can
    do, so a momentary dip (a neighbour on a shared VM) must not lower it and flatter the fraction.
    """
    if device != "cpu":
        sizes = (4096, 8192)  # a GPU needs large products to reach its peak
    best_rate = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for _ in range(3):
            torch.mm(a, b)
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best_rate = max(best_rate, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return best_rate


def _sync(device: str) -> None:
    """Wait for the GPU's queued work (timings on CUDA); nothing on the CPU."""
    if device != "cpu":
        torch.cuda.synchronize(device)


def workload(args):
    """Prompts (varied lengths, no stop tokens inside) and the stop-token set."""
    g = torch.Generator().manual_seed(1)
    stop = list(range(args.vocab - args.num_stop, args.vocab))
    lens = torch.randint(args.prompt_len // 2, args.prompt_len + 1, (args.prompts,), generator=g).tolist()
    prompts = [torch.randint(1, args.vocab - args.num_stop, (n,), generator=g).tolist() for n in lens]
    return prompts, stop


def real_len(tokens: list[int], stop: set[int]) -> int:
    """Tokens up to and including the first stop token (the rest is padding)."""
    for i, t in enumerate(tokens):
        if t in stop:
            return i + 1
    return len(tokens)


_samplers: dict = {}
_warmup_s: dict = {}


def run_ours(model, prompts, stop, args, compile=False):
    """alignkit Sampler; returns (real tokens, seconds, sampler stats, lengths, graphs compiled during the run).

    The Sampler is kept across rounds, as an RL loop keeps it across steps. Its first use warms it
    up on a small workload that meets every step shape (several sequences and a lone one): with
    `compile` that is when the graphs compile, and the seconds it took are reported, not hidden.
    """
    from torch._dynamo.utils import counters

    from alignkit.engine.sampler import Sampler, SamplingParams

    if compile not in _samplers:
        sampler = Sampler(model, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_batched_tokens,
                          compile=compile)
        t = time.perf_counter()
        sampler.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=8, seed=0))
        sampler.generate(prompts[:1], SamplingParams(n=1, max_new_tokens=8, seed=0))
        _warmup_s[compile] = time.perf_counter() - t
        _samplers[compile] = sampler
    sampler = _samplers[compile]
    params = SamplingParams(n=args.group, temperature=1.0, max_new_tokens=args.max_new, stop_token_ids=stop,
                            seed=args.seed)
    graphs = counters["stats"]["unique_graphs"]
    t = time.perf_counter()
    groups = sampler.generate(prompts, params)
    dt = time.perf_counter() - t
    lens = [len(s.token_ids) for g in groups for s in g.samples]
    return sum(lens), dt, sampler.last_stats, lens, counters["stats"]["unique_graphs"] - graphs


def kernel_breakdown(model, prompts, stop, args) -> dict:
    """Re-run our sampler with every kernel call timed: where the time goes (for the report)."""
    import collections

    import alignkit._sampler as ext
    from alignkit.engine.sampler import Sampler, SamplingParams

    spent: collections.Counter = collections.Counter()

    class Timed:  # forwards to the extension, timing each kernel call
        def __getattr__(self, name):
            fn = getattr(ext, name)
            if name == "Scheduler" or not callable(fn):
                return fn

            def timed(*a, **k):
                t = time.perf_counter()
                out = fn(*a, **k)
                spent[name] += time.perf_counter() - t
                return out
            return timed

    # Eager steps (a stand-in kernel module cannot be traced): the split of an uncompiled run.
    sampler = Sampler(model, ops=Timed(), max_num_seqs=args.max_num_seqs,
                      max_num_batched_tokens=args.max_batched_tokens)
    t = time.perf_counter()
    sampler.generate(prompts, SamplingParams(n=args.group, max_new_tokens=args.max_new, stop_token_ids=stop,
                                             seed=args.seed))
    total = time.perf_counter() - t
    st = sampler.last_stats
    return dict(profile_total_s=round(total, 3),
                profile_model_s=round(st.forward_seconds - spent["paged_attention"] - spent["write_kv"], 3),
                profile_paged_attention_s=round(spent["paged_attention"], 3),
                profile_write_kv_s=round(spent["write_kv"], 3), profile_sample_s=round(spent["sample"], 3),
                profile_other_s=round(total - st.forward_seconds - spent["sample"] - spent["copy_blocks"], 3))


def run_generate(model, prompts, stop, args):
    """transformers `generate(num_return_sequences=G, do_sample=True)` on the left-padded batch."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=args.group,
              max_new_tokens=args.max_new, eos_token_id=stop, pad_token_id=0)
    ids, mask = ids.to(args.device), mask.to(args.device)
    with torch.no_grad():
        model.generate(ids[:2], attention_mask=mask[:2], **{**kw, "max_new_tokens": 8})  # warm-up
        _sync(args.device)
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, **kw)
        _sync(args.device)
        dt = time.perf_counter() - t
    s = set(stop)
    lens = [real_len(row[width:].tolist(), s) for row in out]
    return sum(lens), dt, lens


def run_generate_batch(model, prompts, stop, args):
    """transformers continuous batching (`generate_batch`, transformers >= 5), given its best case.

    A fresh call spends seconds building its manager (its paged cache is sized from free memory,
    60% of RAM on CPU: ~14 GB of RSS on a 24 GB machine), so we keep the manager
    (`persistent_manager=True`): the first call on the real workload is the cold run, the second
    identical call is the one that counts (steady state, as in RL where it is called every step).
    A cache sized to the workload (ContinuousBatchingConfig(num_blocks=256 or 512,
    max_batch_tokens=2048 or 4096)) made the cold call 2-3x shorter and used 1.3-3.2 GB, but the
    warm call was no faster (853-1063 tok/s against 1004-1059 with the default), so the default stays.
    """
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=args.group,
                           max_new_tokens=args.max_new, eos_token_id=stop, pad_token_id=0)
    repeated = False
    with torch.no_grad():
        try:
            out, timings = generate_batch_twice(model, prompts, cfg, args)
            if len(out) < len(prompts) * args.group:
                # transformers 5.17 (seen on a GPU machine) returns one sequence per prompt here,
                # ignoring num_return_sequences: a batch 8x smaller would understate it, so it gets
                # each prompt G times instead (the same sequences, without prefix sharing).
                print(f"generate_batch returned {len(out)} of {len(prompts) * args.group} sequences: "
                      "running it again on each prompt repeated G times", file=sys.stderr)
                repeated = True
                model.destroy_cached_continuous_batching_manager()
                cfg.num_return_sequences = 1
                out, timings = generate_batch_twice(model, [p for p in prompts for _ in range(args.group)], cfg, args)
        finally:
            model.destroy_cached_continuous_batching_manager()
            if args.device != "cpu":  # its cache took most of the free GPU memory: give it back
                torch.cuda.empty_cache()
    lens = [real_len(list(o.generated_tokens), set(stop)) for o in out.values()]
    return sum(lens), timings[1], lens, timings[0], repeated


def generate_batch_twice(model, prompts, cfg, args):
    """The cold call (it builds the kept manager), then the warm one that counts: (outputs, [cold_s, warm_s])."""
    timings = []
    for _ in range(2):
        _sync(args.device)
        t = time.perf_counter()
        out = model.generate_batch(prompts, generation_config=cfg, progress_bar=False, persistent_manager=True)
        _sync(args.device)
        timings.append(time.perf_counter() - t)
    return out, timings


def model_flops(model, prompts, lens_per_group, args) -> float:
    """FLOPs of the work our sampler does: each prompt prefilled once, each sample's decode steps."""
    head = model.get_output_embeddings().weight.numel()
    emb = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - emb - head  # tied? then head==emb counted once
    if model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        body = sum(p.numel() for p in model.parameters()) - emb
    d_attn = args.heads * (args.hidden // args.heads)
    flops = 0.0
    for p, lens in zip(prompts, lens_per_group):
        L = len(p)
        # prefill: L tokens through the body, 1 head row (sampled rows are counted with decode)
        flops += 2 * body * L + args.layers * 4 * d_attn * (L * (L + 1) / 2)
        for n in lens:
            fwd = n - 1  # the last sampled token is never fed back
            flops += 2 * body * fwd + 2 * head * n
            # decode token at position L + j attends over L + j + 1 keys
            flops += args.layers * 4 * d_attn * sum(L + j + 1 for j in range(fwd))
    return flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--num-stop", type=int, default=32, help="stop-token set size k (mean length ~ vocab / k)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-batched-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda[:N]: where the model, all three systems and the peak run")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best round per system counts")
    ap.add_argument("--skip-baselines", action="store_true", help="only time our sampler (for profiling)")
    ap.add_argument("--profile", action="store_true", help="add a per-kernel time breakdown of a second run")
    ap.add_argument("--no-compile", action="store_true", help="skip the Sampler(compile=True) runs")
    ap.add_argument("--omp-passive", action="store_true",
                    help="re-run with OMP_WAIT_POLICY=PASSIVE (for machines shared with other jobs)")
    args = ap.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: torch sees no CUDA device here")
    if args.device != "cpu" and args.profile:
        ap.error("--profile times the CPU kernels one call at a time; run it with --device cpu")
    if args.omp_passive and os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
        # OpenMP reads the variable at load time: it must be set before torch is imported.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    # Same CPU budget for everyone: our kernels' thread pool gets the thread count torch gets
    # (read when the extension first runs, so set it before any import of alignkit._sampler).
    os.environ["ALIGNKIT_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    import logging

    import transformers
    transformers.logging.set_verbosity_error()
    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)  # persistent-manager notice

    load_start = os.getloadavg()[0]  # the machine may be shared: report how busy it was
    model = build_model(args)
    prompts, stop = workload(args)
    peaks = [gemm_peak_gflops(args.device)]  # measured again after every round; the highest counts
    # Interleaved rounds, best round per system: on a shared machine the load changes between
    # runs, and interleaving spreads it over all systems instead of penalising one of them.
    best: dict[str, tuple] = {}

    def keep(name, tokens, secs, *extra):
        if name not in best or tokens / secs > best[name][0] / best[name][1]:
            best[name] = (tokens, secs, *extra)

    variants = [("ours_eager", False)] + ([] if args.no_compile else [("ours_compiled", True)])
    compiles = {name: 0 for name, _ in variants}  # graphs compiled in any timed round, not only the best
    for _ in range(args.repeats):
        for name, compile in variants:
            run = run_ours(model, prompts, stop, args, compile)
            compiles[name] += run[4]
            keep(name, *run)
        if not args.skip_baselines:
            keep("generate", *run_generate(model, prompts, stop, args))
            keep("generate_batch", *run_generate_batch(model, prompts, stop, args))
        peaks.append(gemm_peak_gflops(args.device))
    peak = max(peaks)
    # The headline is the compiled sampler when it ran (the eager one is reported beside it).
    head = "ours_eager" if args.no_compile else "ours_compiled"
    ours_tok, ours_s, stats, ours_lens, _ = best[head]
    eager_tok, eager_s = best["ours_eager"][:2]
    groups = [ours_lens[i * args.group:(i + 1) * args.group] for i in range(args.prompts)]
    flops = model_flops(model, prompts, groups, args)
    res = dict(
        model=f"llama d={args.hidden} L={args.layers} heads={args.heads}/{args.kv_heads} vocab={args.vocab}",
        params=sum(p.numel() for p in model.parameters()), prompts=args.prompts, group=args.group,
        prompt_len=f"{args.prompt_len // 2}-{args.prompt_len}", max_new_tokens=args.max_new,
        stop_tokens=args.num_stop, device=args.device, dtype="float32", threads=args.threads,
        repeats=args.repeats, torch=torch.__version__,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"), load_avg_start=round(load_start, 2),
        transformers=transformers.__version__, ours_compiled=not args.no_compile,
        ours_tokens=ours_tok, ours_s=round(ours_s, 3), ours_tok_s=round(ours_tok / ours_s, 1),
        ours_mean_len=round(ours_tok / len(ours_lens), 1), ours_steps=stats.steps,
        # Unsynchronised on a GPU (it would time kernel launches only), so reported on the CPU alone.
        ours_forward_share=round(stats.forward_seconds / stats.seconds, 3) if args.device == "cpu" else None,
        ours_warmup_s=round(_warmup_s[not args.no_compile], 2), ours_compiles_during_run=compiles[head],
        ours_eager_tok_s=round(eager_tok / eager_s, 1), ours_eager_warmup_s=round(_warmup_s[False], 2),
        gemm_peak_gflops=round(peak, 1), gemm_peak_lowest_gflops=round(min(peaks), 1),
        ours_gflops=round(flops / ours_s / 1e9, 2),
        flops_fraction=round(flops / ours_s / 1e9 / peak, 3),
    )
    if not args.skip_baselines:
        gen_tok, gen_s, gen_lens = best["generate"]
        gb_tok, gb_s, gb_lens, gb_cold_s, gb_repeated = best["generate_batch"]
        res.update(
            generate_tokens=gen_tok, generate_s=round(gen_s, 3), generate_tok_s=round(gen_tok / gen_s, 1),
            generate_mean_len=round(gen_tok / len(gen_lens), 1),
            generate_batch_tokens=gb_tok, generate_batch_s=round(gb_s, 3),
            generate_batch_tok_s=round(gb_tok / gb_s, 1), generate_batch_mean_len=round(gb_tok / len(gb_lens), 1),
            generate_batch_sequences=len(gb_lens), generate_batch_repeated_prompts=gb_repeated,
            generate_batch_cold_s=round(gb_cold_s, 3),
            speedup_vs_generate=round((ours_tok / ours_s) / (gen_tok / gen_s), 2),
            speedup_vs_generate_batch=round((ours_tok / ours_s) / (gb_tok / gb_s), 2),
            eager_speedup_vs_generate=round((eager_tok / eager_s) / (gen_tok / gen_s), 2),
            eager_speedup_vs_generate_batch=round((eager_tok / eager_s) / (gb_tok / gb_s), 2),
        )
    if args.profile:
        res.update(kernel_breakdown(model, prompts, stop, args))
    res["load_avg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
