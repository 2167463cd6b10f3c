"""A non-HF module implementing the small Runner protocol is sampled correctly."""

import torch
import torch.nn.functional as F

from alignkit.engine.sampler import PagedAttention, Sampler, SamplingParams


class TinyLM(torch.nn.Module):
    """One-layer transformer with learned positions and GQA, written against the Runner protocol."""

    num_layers, num_kv_heads, head_dim, vocab_size, max_context = 1, 1, 8, 31, 64

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(self.vocab_size, 16)
        self.pos = torch.nn.Embedding(self.max_context, 16)
        self.q = torch.nn.Linear(16, 16)
        self.kv = torch.nn.Linear(16, 2 * self.head_dim)
        self.head = torch.nn.Linear(16, self.vocab_size)
        self.head.weight.data *= 10

    dtype = property(lambda self: self.q.weight.dtype)
    device = property(lambda self: self.q.weight.device)

    def _qkv(self, ids, pos):
        h = self.emb(ids) + self.pos(pos)
        k, v = self.kv(h).split(self.head_dim, -1)
        return h, self.q(h).unflatten(-1, (2, self.head_dim)), k.unsqueeze(-2), v.unsqueeze(-2)

    def full_logits(self, ids):
        """Training-style forward of one sequence: [T] -> [T, vocab]."""
        h, q, k, v = self._qkv(ids, torch.arange(len(ids)))
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1).expand(2, -1, -1),
                                           v.transpose(0, 1).expand(2, -1, -1), is_causal=True)
        return self.head(h + o.transpose(0, 1).flatten(1))

    def forward(self, input_ids, positions, attn: PagedAttention):
        """Runner protocol: packed step -> logits of the sampled rows."""
        h, q, k, v = self._qkv(input_ids, positions)
        o = attn.attend(0, q, k, v, self.head_dim ** -0.5)
        return self.head(h + o.flatten(1))[attn.logits_indices]


def test_custom_runner_greedy_matches_its_own_full_forward():
    model = TinyLM().eval()
    prompts = [[3, 4, 5], [9] * 11, [1, 2]]
    groups = Sampler(model, block_size=4).generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=9))
    for p, g in zip(prompts, groups):
        seq = list(p)
        with torch.no_grad():
            for _ in range(9):
                seq.append(int(model.full_logits(torch.tensor(seq))[-1].argmax()))
        assert g.samples[0].token_ids == seq[len(p):]
