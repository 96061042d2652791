"""Hybrid mode, ``device_map={"gpu": G, "lpu": N}``: the prompt is prefilled by PyTorch (on
CUDA when G > 0 and there is a GPU, else on the CPU), its KV cache is handed to the LPU
(converted to fp16 and written into the KV regions through the device interface, which
stripes it over the HBM channels), and the LPU decodes from there.

Prefill is matrix x matrix work that a GPU does well; decode at batch 1 is bandwidth-bound
work that the LPU does well. The first new token comes from PyTorch's logits; every later one
from the LPU's. PyTorch's K and V (after RoPE, as the LPU's KVSTORE stores them) differ from
the LPU's own in the last fp16 bits at most, so greedy tokens agree with pure-LPU runs except
at near-ties (tested).
"""

from __future__ import annotations

import inspect
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

log = logging.getLogger("hyperdex")

_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


class HybridPrefill:
    """The PyTorch half of hybrid mode for one compiled model.

    Args:
        folder: the compiled folder (its ``ckpt/`` holds the Hugging Face files).
        gpus: G of the device map; 0 runs the prefill on the CPU.
        kv_region_names: the memory map's KV regions in plan order (``blk.N.k_cache`` /
            ``blk.N.v_cache``), i.e. the first axis of ``Session.read_kv``.
        num_kv_heads, head_dim: the shape of a KV row.
    """

    def __init__(
        self,
        folder: Path,
        gpus: int,
        kv_region_names: list[str],
        num_kv_heads: int,
        head_dim: int,
    ) -> None:
        try:
            import torch
            import transformers
        except ImportError as e:
            raise ConfigError(
                "hybrid mode (device_map with 'gpu') prefills with PyTorch; install torch "
                "(pip install 'hyperdex[torch]')"
            ) from e
        ckpt = Path(folder) / "ckpt"
        if not any(any(ckpt.glob(p)) for p in _WEIGHT_FILES):
            raise ConfigError(
                f"{ckpt} holds no Hugging Face weights (compiled with low_memory_usage=True?); "
                "hybrid mode runs the prefill from them: recompile with "
                "low_memory_usage=False, or load with device_map={'lpu': N}"
            )
        if gpus > 0 and torch.cuda.is_available():
            self.device = torch.device("cuda", 0)
            dtype = torch.float16  # the LPU's KV cache is fp16 anyway
            if gpus > 1:
                log.info("hyperdex: hybrid prefill uses one GPU (cuda:0) of the %d asked", gpus)
        else:
            self.device = torch.device("cpu")
            dtype = torch.float32
            if gpus > 0:
                log.info("hyperdex: no CUDA device; the hybrid prefill runs on the CPU")
        self._torch = torch
        self.model = (
            transformers.AutoModelForCausalLM.from_pretrained(
                str(ckpt), dtype=dtype, local_files_only=True
            )
            .to(self.device)
            .eval()
        )
        # transformers 5.2x renamed forward's past_key_values to cache (the old name warns,
        # and goes in 5.40); older 5.x knows only past_key_values.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.num_kv_heads = int(num_kv_heads)
        self.head_dim = int(head_dim)
        # region index of (layer, 0 = K / 1 = V)
        self._index: dict[tuple[int, int], int] = {}
        for i, name in enumerate(kv_region_names):
            m = re.fullmatch(r"blk\.(\d+)\.([kv])_cache", name)
            if m is None:
                raise ConfigError(f"unexpected KV region {name!r} in the memory map; recompile")
            self._index[(int(m.group(1)), 0 if m.group(2) == "k" else 1)] = i
        self.num_layers = len(self._index) // 2
        if sorted(self._index) != [
            (layer, kv) for layer in range(self.num_layers) for kv in (0, 1)
        ]:
            raise ConfigError("the memory map's KV regions do not cover every layer; recompile")

    @property
    def describe(self) -> str:
        return f"PyTorch on {self.device}"

    def prefill(self, session: Any, prompt: np.ndarray, start: int) -> np.ndarray:
        """Prefills ``prompt[start:]`` in PyTorch after the ``start`` positions the device
        already holds, writes their K and V into the device's KV cache, and returns the fp32
        logits of the last position ([vocab]). The session then holds ``len(prompt)``."""
        torch = self._torch
        ids = torch.as_tensor(np.asarray(prompt[start:], dtype=np.int64)[None], device=self.device)
        cache = self._empty_cache()
        dtype = next(self.model.parameters()).dtype
        if start > 0:  # the cached prefix, as the device holds it
            past = session.read_kv(0, start)
            for layer in range(self.num_layers):
                k, v = (self._to_torch(past[self._index[(layer, j)]], dtype) for j in (0, 1))
                cache.update(k, v, layer)
        with torch.no_grad():
            out = self.model(input_ids=ids, use_cache=True, **{self._cache_arg: cache})
        # An empty cache object is falsy (no layers): test for presence, not truth.
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        n = ids.shape[1]
        rows = np.empty((2 * self.num_layers, n, self.num_kv_heads * self.head_dim), np.float16)
        for layer in range(self.num_layers):
            keys, values = _layer_kv(cache, layer)
            for j, t in ((0, keys), (1, values)):
                if (
                    t.shape[0] != 1
                    or t.shape[1] != self.num_kv_heads
                    or t.shape[3] != self.head_dim
                ):
                    raise ConfigError(
                        f"PyTorch's KV cache of layer {layer} has shape {tuple(t.shape)}, the "
                        f"compiled model expects [1, {self.num_kv_heads}, n, {self.head_dim}]"
                    )
                new = t[0, :, t.shape[2] - n :, :].permute(1, 0, 2).reshape(n, -1)
                rows[self._index[(layer, j)]] = new.to(torch.float16).cpu().numpy()
        session.write_kv(start, rows)
        return out.logits[0, -1].float().cpu().numpy()

    def _to_torch(self, rows: np.ndarray, dtype: Any) -> Any:
        """[n, heads * dim] fp16 rows -> [1, heads, n, dim] on the prefill device."""
        n = rows.shape[0]
        t = self._torch.from_numpy(np.ascontiguousarray(rows)).to(self.device)
        return t.view(n, self.num_kv_heads, self.head_dim).permute(1, 0, 2)[None].to(dtype)

    def _empty_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache()


def _layer_kv(cache: Any, layer: int) -> tuple[Any, Any]:
    """A cache layer's (keys, values), in transformers 5 (``layers``) or 4 (``key_cache``)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[layer].keys, layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]
