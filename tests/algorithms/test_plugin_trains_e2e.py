"""A user's objective in its own file trains end to end through `tools/train`, with no engine change."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]

PLUGIN = textwrap.dedent(
    '''
    """A custom objective living outside alignkit: DPO on length-normalised log-probs, hinge-shaped."""
    from dataclasses import dataclass

    import torch

    from alignkit.algorithms import Needs, Objective


    class HingeMeanDPO(Objective):
        """max(0, 1 - beta * h) with h the mean-log-prob policy/reference margin."""

        @dataclass
        class Config:
            beta: float = 1.0

        needs = Needs(data="preference", reference=True, logps="mean")

        def loss(self, batch, out):
            h = (out.chosen_logps - out.ref_chosen_logps) - (out.rejected_logps - out.ref_rejected_logps)
            loss = torch.relu(1.0 - self.cfg.beta * h).mean()
            return loss, {"plugin/margin": h.detach().mean()}
    '''
)

WORDS = "the cat dog sat ran on a mat log big small red blue good bad yes no".split()


def build_tiny_model(path: Path) -> None:
    """A 2-layer, hidden-32 Llama with a word-level tokenizer over WORDS, saved to `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=specials))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    cfg = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=hf_tok.pad_token_id,
        bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    hf_tok.save_pretrained(path)


def write_preferences(path: Path, n: int = 16) -> None:
    rows = []
    for i in range(n):
        a, b = WORDS[i % len(WORDS)], WORDS[(3 * i + 1) % len(WORDS)]
        rows.append({"prompt": f"the {a} sat on", "chosen": f"a {b} mat", "rejected": f"no {a} log bad"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plugin_file_trains_through_tools_train(tmp_path):
    plugin = tmp_path / "my_objective.py"
    plugin.write_text(PLUGIN)
    model_dir, data, out = tmp_path / "model", tmp_path / "prefs.jsonl", tmp_path / "run"
    build_tiny_model(model_dir)
    write_preferences(data)
    cmd = [
        sys.executable, str(REPO / "tools" / "train"),
        f"algo.name={plugin}:HingeMeanDPO", "algo.beta=2.0",
        f"model.path={model_dir}", f"data.train={data}", f"output.dir={out}",
        "train.max_steps=3", "train.batch_size=4", "train.lr=1e-2", "output.log_every=1",
        "output.tensorboard=false", "output.progress=false",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in logged if r.get("split") == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3]
    # The plugin's own metric reaches the log; the first step runs at pi = pi_ref, so margin 0.
    assert all("plugin/margin" in r for r in train_rows)
    assert abs(train_rows[0]["plugin/margin"]) < 1e-5
    # Three optimizer steps at lr 1e-2 moved the weights.
    from safetensors.torch import load_file

    before = load_file(model_dir / "model.safetensors")
    after = load_file(out / "final" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
