"""Prefix caching: a prompt prefix whose KV cache was computed before is not computed again.

The device holds one sequence's KV cache (docs/formats.md: per layer a K and a V region,
position p in HBM channel p % C). Two tiers keep KV blocks around:

1. **Resident**: whatever sequence the device holds now. A new prompt that shares a prefix
   with it (a chat's next turn, the same system prompt again) simply continues from there:
   ``Session.truncate`` and prefill the rest. No transfer at all.
2. **Host pool** (:class:`PrefixCache`): fixed-size blocks of ``block_size`` positions, keyed
   by a chained hash of their tokens, kept in host memory under an LRU with a byte capacity.
   Before the device overwrites a resident block, the block is copied to the pool (write-back,
   so a block crosses the bus only when another sequence takes the device over); a later
   prompt with the same prefix gets its blocks written back into the KV regions
   (``Session.write_kv``) and prefills only the remainder.

Only full blocks enter the pool. The hash of block i covers every token of blocks 0..i (a
chain), salted with the model and its compile options (:func:`cache_salt`), so equal hashes
mean equal KV rows. A block in use by the sequence the device runs is referenced (refcount)
and never evicted; eviction takes the least recently used unreferenced block, and a chain is
touched from its tail to its head so that tails go before the heads they depend on.

Restoring is exact: the KV rows written back are the bytes the device computed, and a prefill
chunk computes each row from the cache alone, so outputs are bit-identical with the cache on
or off (tested). docs/serving.md gives the costs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["KVResidency", "PrefixCache", "PrefixCacheStats", "cache_salt"]

DEFAULT_BLOCK_SIZE = 32  # = the u55c's HBM channels: one row per channel per KV region
DEFAULT_CAPACITY_BYTES = 1 << 30


def cache_salt(folder: Path, memory_map: dict[str, Any], mode: str = "lpu") -> bytes:
    """The salt of every block hash: the weights (param file CRCs), the memory plan, both
    programs and the compile options, plus ``mode`` (what computed the KV rows: "lpu", or the
    hybrid prefill's engine, whose rows differ in the last bits)."""
    h = hashlib.sha256()
    compile_info = json.loads((folder / "compile.json").read_text(encoding="utf-8"))
    compile_info.pop("timings_s", None)
    parts = {
        "fingerprint": memory_map.get("fingerprint"),
        "params": [(p.get("bytes"), p.get("crc32")) for p in memory_map.get("param_files", [])],
        "compile": compile_info,
        "mode": mode,
    }
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for name in ("prefill.bin", "decode.bin"):
        path = folder / "inst" / name
        h.update(hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"-")
    return h.digest()


@dataclass
class PrefixCacheStats:
    """Counters since the model was loaded (or :meth:`PrefixCache.reset_stats`)."""

    queries: int = 0  # prompts looked up
    query_tokens: int = 0  # prompt tokens looked up
    hit_tokens: int = 0  # of them, not prefilled (resident + restored)
    resident_hit_tokens: int = 0  # of those, already on the device
    restored_blocks: int = 0  # blocks written back from the pool
    saved_blocks: int = 0  # blocks copied from the device into the pool
    evicted_blocks: int = 0
    rejected_blocks: int = 0  # not saved: the pool was full of referenced blocks

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


@dataclass
class _Block:
    data: np.ndarray  # float16 [kv regions, block_size, kv cols]
    refs: int = 0


@dataclass
class PrefixCache:
    """The host pool of KV blocks.

    Args:
        block_size: positions per block (> 0).
        block_bytes: bytes of one block (all KV regions).
        capacity_bytes: the pool's size; 0 keeps nothing in the pool (only the resident tier).
        salt: from :func:`cache_salt`.
    """

    block_size: int
    block_bytes: int
    capacity_bytes: int
    salt: bytes
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)

    def __post_init__(self) -> None:
        for name in ("block_size", "block_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        cap = self.capacity_bytes
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"prefix cache capacity must be an integer >= 0 bytes, got {cap!r}")
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()  # oldest first
        self._lock = threading.RLock()

    @property
    def capacity_blocks(self) -> int:
        return self.capacity_bytes // self.block_bytes

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: bytes) -> bool:
        return key in self._blocks

    @property
    def bytes_used(self) -> int:
        return len(self._blocks) * self.block_bytes

    def block_hashes(self, tokens: Sequence[int] | np.ndarray) -> list[bytes]:
        """Chained hashes of the full blocks of ``tokens``: hash i covers blocks 0..i."""
        ids = np.asarray(tokens, dtype=np.int64)
        out: list[bytes] = []
        parent = self.salt
        for i in range(len(ids) // self.block_size):
            block = ids[i * self.block_size : (i + 1) * self.block_size].astype("<i4")
            parent = hashlib.sha256(parent + block.tobytes()).digest()
            out.append(parent)
        return out

    def get(self, key: bytes) -> Optional[np.ndarray]:
        with self._lock:
            block = self._blocks.get(key)
            if block is None:
                return None
            self._blocks.move_to_end(key)
            return block.data

    def put(self, key: bytes, data: np.ndarray) -> bool:
        """Adds a block (evicting unreferenced ones if needed); False when it does not fit."""
        if data.nbytes != self.block_bytes:
            raise ValueError(f"a block is {self.block_bytes} bytes, got {data.nbytes}")
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return True
            if not self._make_room(1):
                self.stats.rejected_blocks += 1
                return False
            self._blocks[key] = _Block(np.ascontiguousarray(data))
            return True

    def touch_chain(self, keys: Sequence[bytes]) -> None:
        """Marks a chain as just used, tail first, so the head is the most recent."""
        with self._lock:
            for key in reversed(keys):
                if key in self._blocks:
                    self._blocks.move_to_end(key)

    def acquire(self, keys: Sequence[bytes]) -> None:
        """References the blocks (those in the pool): they cannot be evicted until released."""
        with self._lock:
            for key in keys:
                block = self._blocks.get(key)
                if block is not None:
                    block.refs += 1

    def release(self, keys: Sequence[bytes]) -> None:
        with self._lock:
            for key in keys:
                block = self._blocks.get(key)
                if block is not None and block.refs > 0:
                    block.refs -= 1

    def refcount(self, key: bytes) -> int:
        block = self._blocks.get(key)
        return block.refs if block is not None else 0

    def clear(self) -> None:
        """Drops every unreferenced block."""
        with self._lock:
            for key in [k for k, b in self._blocks.items() if b.refs == 0]:
                del self._blocks[key]

    def reset_stats(self) -> None:
        self.stats = PrefixCacheStats()

    def _make_room(self, n: int) -> bool:
        excess = len(self._blocks) + n - self.capacity_blocks
        if excess <= 0:
            return True
        victims = []
        for key, block in self._blocks.items():  # least recently used first
            if block.refs == 0:
                victims.append(key)
                if len(victims) == excess:
                    break
        if len(victims) < excess:
            return False
        for key in victims:
            del self._blocks[key]
        self.stats.evicted_blocks += len(victims)
        return True


class KVResidency:
    """What the device's KV cache holds, and the moves between it and the pool.

    ``tokens`` are the ids whose KV rows [0, len) the device holds (== ``session.position``
    after every call). The model calls, under its device lock, :meth:`prepare` before a
    prefill, :meth:`append` after each device call that appended tokens, :meth:`sync` after
    a failed one, and :meth:`overwrite` before a call that rewrites the cache from position 0
    on its own. ``cache`` None disables prefix caching: every prompt is prefilled from
    position 0.

    The pool blocks a prompt restored stay referenced while its sequence is the device's,
    until the next :meth:`prepare` or :meth:`overwrite`.
    """

    def __init__(self, session: Any, cache: Optional[PrefixCache]) -> None:
        self.session = session
        self.cache = cache
        self.tokens: list[int] = []
        self.last_cached_tokens = 0  # of the last prepared prompt, not prefilled
        self._held: list[bytes] = []  # pool blocks the running sequence references

    def prepare(self, prompt: Sequence[int] | np.ndarray) -> int:
        """Puts the longest cached prefix of ``prompt`` into the device's KV cache and sets the
        session's position after it; returns that position (the tokens not to prefill). At
        least the last prompt token is always left to prefill: its logits are needed."""
        ids = [int(t) for t in prompt]
        self._release()
        cache, session = self.cache, self.session
        if cache is None:
            self.tokens = []
            session.reset()
            self.last_cached_tokens = 0
            return 0
        limit = len(ids) - 1
        wanted = cache.block_hashes(ids[:limit])
        # Tier 1: the sequence on the device, token by token (no block alignment needed).
        keep = 0
        resident = self.tokens[: session.position]
        for a, b in zip(resident, ids[:limit]):
            if a != b:
                break
            keep += 1
        # Tier 2: pool blocks after that; pin them before saving anything (saving may evict).
        first = keep // cache.block_size
        hits = []
        for key in wanted[first:]:
            if key not in cache:
                break
            hits.append(key)
        cache.acquire(hits)
        self._held = hits
        self._save_resident(from_position=keep)
        session.truncate(keep)
        self.tokens = resident[:keep]
        for i, key in enumerate(hits):
            data = cache.get(key)
            if data is None:  # cannot happen while referenced; keep what was restored
                break
            start = (first + i) * cache.block_size
            session.write_kv(start, data)
            self.tokens = ids[: start + cache.block_size]
            cache.stats.restored_blocks += 1
        cache.touch_chain(wanted[: len(self.tokens) // cache.block_size])
        position = session.position
        stats = cache.stats
        stats.queries += 1
        stats.query_tokens += len(ids)
        stats.hit_tokens += position
        stats.resident_hit_tokens += keep
        self.last_cached_tokens = position
        return position

    def append(self, ids: Sequence[int] | np.ndarray) -> None:
        """Records tokens the device just appended to its sequence."""
        self.tokens.extend(int(t) for t in ids)
        self._sync()

    def sync(self) -> None:
        """After a failed call: the session restored its position, the record follows."""
        self._sync()

    def overwrite(self) -> None:
        """The device is about to rewrite its cache from position 0 (forward with all logits,
        or a hybrid prefill): save the resident blocks and forget them."""
        self._release()
        if self.cache is not None:
            self._save_resident(from_position=0)
        self.tokens = []
        self.session.reset()

    def _sync(self) -> None:
        position = self.session.position
        if len(self.tokens) > position:
            del self.tokens[position:]
        elif len(self.tokens) < position:  # rows nobody recorded: do not trust them
            self.tokens = []
            self.session.reset()

    def _save_resident(self, from_position: int) -> None:
        """Copies the resident full blocks that overlap [from_position, ...) into the pool."""
        cache = self.cache
        assert cache is not None
        B = cache.block_size
        tokens = self.tokens[: self.session.position]
        keys = cache.block_hashes(tokens)
        first = from_position // B
        todo = [i for i in range(first, len(keys)) if keys[i] not in cache]
        if not todo or cache.capacity_blocks == 0:
            return
        cache.acquire(keys)  # the chain's head must not be evicted by its own tail
        try:
            for i in todo:
                data = self.session.read_kv(i * B, B)
                if not cache.put(keys[i], data):
                    break
                cache.stats.saved_blocks += 1
            cache.touch_chain(keys)
        finally:
            cache.release(keys)

    def _release(self) -> None:
        if self._held and self.cache is not None:
            self.cache.release(self._held)
        self._held = []
