"""A static-cache decoder for Llama-family models, each decode step one CUDA graph.

The transformers engine's plain loop (worker/engines/hf.py) grows its KV cache by concatenation,
re-builds masks and launches several hundred kernels from Python every step; at batch 256 on a
0.5B model most of a step is launch overhead. Here the model's own modules (embedding, norms,
projections, MLPs, rotary embedding, head: loaded by ml/loading.py) run over a preallocated cache:

- prefill: each distinct prompt once, left-padded to the batch's widest, its keys and values
  written to every row that shares it;
- decode: one step = embed the last tokens, attend over the static cache (keys not yet written or
  padding are masked), the head, then the seeded sampler (ml/fused_sampler.py, one kernel) writes
  the next tokens straight into the step's input. On CUDA the step is captured once per (rows,
  cache length) and replayed; the host reads the produced tokens back every `SYNC_EVERY` steps.

Rows keep decoding past their stop token until every row has stopped (a replayed graph cannot
drop rows); their extra tokens are cut off on the host. Which models qualify: `supports`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml import fused_sampler
from shared.protocol import SamplingParams
from shared.sampling import MASK32, sample_step

FAMILIES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
CACHE_QUANTUM = 128  # cache lengths are rounded up to this, so batches of nearby shapes share a graph
SYNC_EVERY = 16  # decode steps between reads of the produced tokens (to find rows that stopped)
GRAPHS_KEPT = 2  # each holds a KV cache for its shape: a 7B model's at batch 256 is tens of GiB


def supports(model: Any) -> str | None:
    """Why this model cannot use the static decoder, or None."""
    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {sorted(FAMILIES)}"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "layers other than full attention"
    devices = set((getattr(model, "hf_device_map", None) or {}).values())
    if len(devices) > 1:
        return "the model is spread over several devices"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "not a decoder with layers and a rotary embedding"
    return None


@dataclass
class Batch:
    """What the decoder needs per row: prompt ids, the sampling constants and its token limit."""

    prompts: list[list[int]]
    seeds: list[int]
    sample_indices: list[int]
    temperatures: list[float]
    limits: list[int]
    stops: frozenset[int]  # ids that end a row (the stop token is kept)


@dataclass
class Decoded:
    tokens: list[list[int]]  # per row, every produced token up to and including its stop token
    logprobs: list[list[float]]


class _Buffers:
    """The tensors a captured step reads and writes: their addresses never change."""

    def __init__(self, torch: Any, model: Any, rows: int, length: int) -> None:
        config, device, dtype = model.config, model.device, model.dtype
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        shape = (rows, kv_heads, length, head_dim)
        layers = int(config.num_hidden_layers)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.valid = torch.zeros((rows, length), dtype=torch.bool, device=device)
        self.tokens = torch.zeros(rows, dtype=torch.int64, device=device)  # the step's input
        self.positions = torch.zeros(rows, dtype=torch.int64, device=device)  # rotary positions
        self.slot = torch.zeros(1, dtype=torch.int64, device=device)  # cache index written this step
        self.step = torch.zeros(1, dtype=torch.int64, device=device)  # completion position
        self.out_tokens = torch.zeros((rows, length), dtype=torch.int64, device=device)
        self.out_logprobs = torch.zeros((rows, length), dtype=torch.float64, device=device)
        self.next_logprobs = torch.zeros(rows, dtype=torch.float64, device=device)
        self.logits = torch.zeros((rows, model.lm_head.out_features), dtype=dtype, device=device)
        # the sampler's per-row constants: filled per batch, in place (a graph holds their addresses)
        self.params = fused_sampler.RowParams(device, [0] * rows, [0] * rows, [1.0] * rows)
        self.sampling: list[Any] = []  # the rows' SamplingParams, for the reference sampler
        self.rows, self.length = rows, length

    def load(self, batch: Batch) -> None:
        """This batch's sampling constants into the buffers (padding rows sample like row 0)."""
        pad = self.rows - len(batch.seeds)
        params = fused_sampler.RowParams(
            self.params.words.device, batch.seeds + [0] * pad, batch.sample_indices + [0] * pad,
            batch.temperatures + [1.0] * pad,
        )  # fmt: skip
        for target, value in ((self.params.words, params.words), (self.params.temps, params.temps),
                              (self.params.stochastic, params.stochastic)):  # fmt: skip
            target.copy_(value)
        temps = batch.temperatures + [1.0] * pad
        self.sampling = [SamplingParams(temperature=t, max_tokens=1) for t in temps]


class StaticDecoder:
    """Decodes batches on one loaded model (see the module docstring); not thread-safe."""

    def __init__(self, model: Any, graphs: bool | None = None) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.inner = model.model
        on_cuda = model.device.type == "cuda"
        self.graphs = on_cuda if graphs is None else graphs
        # the fused kernel where Triton runs (a GPU, or its interpreter); elsewhere the reference
        self.fused = fused_sampler.available() and (on_cuda or fused_sampler.interpreted())
        self._captured: dict[tuple[int, int], tuple[_Buffers, Any]] = {}

    # ------------------------------------------------------------------ the model's math

    def _attention(
        self, layer: Any, x: Any, cos: Any, sin: Any, buf: _Buffers, mask: Any, prefill: bool
    ) -> Any:
        torch, attn = self.torch, layer.self_attn
        rows, width = x.shape[:2]
        head_dim = attn.head_dim
        q = attn.q_proj(x).view(rows, width, -1, head_dim)
        k = attn.k_proj(x).view(rows, width, -1, head_dim)
        v = attn.v_proj(x).view(rows, width, -1, head_dim)
        if getattr(attn, "q_norm", None) is not None:  # Qwen3: per-head norms before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        index = layer.self_attn.layer_idx
        if prefill:
            return self._prefill_attention(attn, q, k, v, mask, buf, index)
        buf.keys[index].index_copy_(2, buf.slot, k)
        buf.values[index].index_copy_(2, buf.slot, v)
        kv_heads = k.shape[1]
        # grouped-query attention without copying keys: each kv head's query group as its queries
        grouped = q.reshape(rows, kv_heads, -1, head_dim)
        out = torch.nn.functional.scaled_dot_product_attention(
            grouped, buf.keys[index], buf.values[index], attn_mask=mask, scale=attn.scaling
        )
        return attn.o_proj(out.reshape(rows, 1, -1))

    def _prefill_attention(
        self, attn: Any, q: Any, k: Any, v: Any, mask: Any, buf: _Buffers, index: int
    ) -> Any:
        torch = self.torch
        width = q.shape[2]
        owner = self._owner
        buf.keys[index][:, :, :width] = k[owner]
        buf.values[index][:, :, :width] = v[owner]
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
        return attn.o_proj(out.transpose(1, 2).reshape(q.shape[0], width, -1))

    def _forward(self, ids: Any, positions: Any, buf: _Buffers, mask: Any, prefill: bool) -> Any:
        """Logits of the last position per row ([rows, vocab])."""
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, positions)
        for layer in self.inner.layers:
            x = x + self._attention(layer, layer.input_layernorm(x), cos, sin, buf, mask, prefill)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(self.inner.norm(x[:, -1]))

    # ------------------------------------------------------------------ prefill and steps

    def _prefill(self, batch: Batch, buf: _Buffers) -> tuple[Any, int]:
        """Distinct prompts through the model, their cache fanned out to the rows; the logits of
        each row's last prompt position and the padded prompt width."""
        torch = self.torch
        owners: dict[tuple[int, ...], int] = {}
        owner = [owners.setdefault(tuple(p), len(owners)) for p in batch.prompts]
        owner += [0] * (buf.rows - len(owner))  # padding rows repeat the first prompt
        prompts = list(owners)
        width = max(len(p) for p in prompts)
        device = self.model.device
        ids = torch.zeros((len(prompts), width), dtype=torch.int64)
        real = torch.zeros((len(prompts), width), dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.int64)
            real[i, width - len(prompt) :] = True
        ids, real = ids.to(device), real.to(device)
        positions = (real.long().cumsum(-1) - 1).clamp(min=0)
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        # a padding query sees itself, so no softmax runs over nothing (NaN would reach the cache)
        mask = (causal[None] & real[:, None, :]) | torch.eye(width, dtype=torch.bool, device=device)[None]
        self._owner = torch.tensor(owner, device=device)
        logits = self._forward(ids, positions, buf, mask[:, None], prefill=True)
        buf.valid.zero_()
        buf.valid[:, :width] = real[self._owner]
        buf.positions.copy_(positions[self._owner, -1] + 1)
        return logits[self._owner], width

    def _step(self, buf: _Buffers) -> None:
        """One decode step on the buffers: sample from `buf.logits`, then run the model on the new
        tokens (the next step's logits); every shape and address is fixed, so it can be captured."""
        if self.fused:
            fused_sampler.sample_into(buf.logits, buf.params, buf.step, buf.tokens, buf.next_logprobs)
        else:
            self._reference_sample(buf)
        buf.out_tokens.index_copy_(1, buf.step, buf.tokens[:, None])
        buf.out_logprobs.index_copy_(1, buf.step, buf.next_logprobs[:, None])
        buf.valid.index_fill_(1, buf.slot, True)
        mask = buf.valid[:, None, None, :]
        buf.logits.copy_(self._forward(buf.tokens[:, None], buf.positions[:, None], buf, mask, prefill=False))
        buf.positions.add_(1)
        buf.slot.add_(1)
        buf.step.add_(1)

    def _reference_sample(self, buf: _Buffers) -> None:
        """shared/sampling.py's sampler in torch (no Triton here): the rule the kernel implements."""
        step = int(buf.step.item())
        rows = buf.rows
        words = buf.params.words.tolist()
        seeds = [(w[0] & MASK32) | ((w[1] & MASK32) << 32) for w in words]
        indices = [(w[2] & MASK32) | ((w[3] & MASK32) << 32) for w in words]
        tokens, logprobs = sample_step(self.torch, buf.logits, seeds, indices, [step] * rows, buf.sampling)
        buf.tokens.copy_(tokens)
        buf.next_logprobs.copy_(logprobs)

    def _buffers(self, rows: int, length: int) -> _Buffers:
        key = (rows, length)
        if key in self._captured:
            return self._captured[key][0]
        if len(self._captured) >= GRAPHS_KEPT:
            self._captured.pop(next(iter(self._captured)))
        buf = _Buffers(self.torch, self.model, rows, length)
        self._captured[key] = (buf, None)
        return buf

    def _capture(self, buf: _Buffers) -> Any:
        """The step as a CUDA graph, after warm-up runs on a side stream (kernels compiled,
        cuBLAS workspaces made). The warm-up steps run on the real batch: the state is saved
        before and restored after, so they leave no trace."""
        torch = self.torch
        state = (buf.valid, buf.tokens, buf.positions, buf.slot, buf.step, buf.logits)
        saved = [t.clone() for t in state]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(buf)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(buf)
        for target, value in zip(
            (buf.valid, buf.tokens, buf.positions, buf.slot, buf.step, buf.logits), saved, strict=True
        ):
            target.copy_(value)
        return graph

    def decode(self, batch: Batch, should_stop: Callable[[], bool] | None = None) -> Decoded | None:
        """Every row's tokens and logprobs; None if `should_stop` fired first."""
        torch = self.torch
        n = len(batch.prompts)
        rows = _bucket(n)
        width = max(len(p) for p in batch.prompts)
        new = max(batch.limits)
        length = CACHE_QUANTUM * math.ceil((width + new + 1) / CACHE_QUANTUM)
        with torch.inference_mode():
            buf = self._buffers(rows, length)
            buf.load(batch)
            logits, width = self._prefill(batch, buf)
            buf.logits.copy_(logits)
            buf.slot.fill_(width)
            buf.step.zero_()
            run = self._graph_step(buf) if self.graphs else (lambda: self._step(buf))
            return self._run(batch, buf, run, new, should_stop)

    def _graph_step(self, buf: _Buffers) -> Callable[[], None]:
        key = (buf.rows, buf.length)
        graph = self._captured[key][1]
        if graph is None:
            graph = self._capture(buf)
            self._captured[key] = (buf, graph)
        return graph.replay

    def _run(self, batch: Batch, buf: _Buffers, run: Callable[[], None], new: int,
             should_stop: Callable[[], bool] | None) -> Decoded | None:  # fmt: skip
        n = len(batch.prompts)
        done = [limit == 0 for limit in batch.limits]
        stopped_at = [limit for limit in batch.limits]
        read = 0
        for step in range(new):
            run()
            if (step + 1) % SYNC_EVERY and step + 1 < new:
                continue
            if should_stop is not None and should_stop():
                return None
            chunk = buf.out_tokens[:n, read : step + 1].tolist()
            for i, tokens in enumerate(chunk):
                for offset, token in enumerate(tokens):
                    at = read + offset
                    if not done[i] and (token in batch.stops or at + 1 >= batch.limits[i]):
                        done[i], stopped_at[i] = True, at + 1
            read = step + 1
            if all(done):
                break
        tokens = buf.out_tokens[:n, :read].tolist()
        logprobs = buf.out_logprobs[:n, :read].tolist()
        return Decoded(
            [t[: stopped_at[i]] for i, t in enumerate(tokens)],
            [lp[: stopped_at[i]] for i, lp in enumerate(logprobs)],
        )


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    """The rotary embedding as Llama applies it (rotate_half)."""
    import torch

    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _bucket(n: int) -> int:
    """Rows a batch of n runs as: up to 32, a multiple of 8; above, a multiple of 32 (fewer graphs)."""
    quantum = 8 if n <= 32 else 32
    return quantum * math.ceil(n / quantum)
