"""The emulator maps the compiled param files copy-on-write instead of copying them
(docs/architecture.md, "Memory"): after loading, the weights are file-backed (shared with the
page cache) rather than anonymous memory of the process; the logits are those of the copy
path (``HYPERDEX_MMAP=0``); a damaged param file fails as before; nothing writes to the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import helpers as H
import numpy as np
import pytest

from hyperdex.errors import FormatError
from hyperdex.transformers import AutoModelForCausalLM

MB = 1 << 20


def _rss() -> Dict[str, int]:
    """RssAnon and RssFile of this process in bytes (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux's /proc/self/status"
)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Llama with about 13 MB of fp16 weights: large enough to see in RSS."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=4096,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    folder = tmp_path_factory.mktemp("param_mmap") / "llama"
    H.make_hf_model("llama", folder, seed=3, config=config)
    return folder


@pytest.fixture(scope="module")
def compiled(hf_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(H.compile_model(hf_folder, tmp_path_factory.mktemp("param_mmap_out"), 64))


def _param_files(folder: Path) -> list:
    return sorted((folder / "param").rglob("hbm_ch*.bin"))


def _load(folder: Path, monkeypatch: pytest.MonkeyPatch, mmap: bool, num_device: int = 1) -> Any:
    monkeypatch.setenv("HYPERDEX_MMAP", "1" if mmap else "0")
    return AutoModelForCausalLM.from_pretrained(str(folder), device_map={"lpu": num_device})


def _logits(model: Any) -> np.ndarray:
    ids = np.array([[5, 17, 301, 4000, 9, 77, 1024, 3]], dtype=np.int64)
    return np.asarray(model(ids).logits, dtype=np.float32)


def test_weights_are_file_backed(compiled: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = sum(f.stat().st_size for f in _param_files(compiled))
    assert weights > 8 * MB, weights
    for f in _param_files(compiled):  # in the page cache, as after a compile
        f.read_bytes()

    before = _rss()
    mapped = _load(compiled, monkeypatch, mmap=True)
    after = _rss()
    anon, file = after["RssAnon"] - before["RssAnon"], after["RssFile"] - before["RssFile"]
    # the weights are mapped from the files (and touched once, by the CRC check)
    assert file > 0.9 * weights, (file, weights)
    assert anon < 0.5 * weights, (anon, weights)

    before = _rss()
    copied = _load(compiled, monkeypatch, mmap=False)
    after = _rss()
    anon, file = after["RssAnon"] - before["RssAnon"], after["RssFile"] - before["RssFile"]
    assert anon > 0.9 * weights, (anon, weights)  # the copy path: the weights once more
    assert file < 0.5 * weights, (file, weights)
    del mapped, copied


@pytest.mark.parametrize("num_device", [1, 2])
def test_same_logits_as_the_copy_path(
    hf_folder: Path,
    compiled: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    num_device: int,
) -> None:
    folder = compiled if num_device == 1 else Path(H.compile_model(hf_folder, tmp_path, 64, 2))
    files = {f: f.read_bytes() for f in _param_files(folder)}
    want = _logits(_load(folder, monkeypatch, mmap=False, num_device=num_device))
    model = _load(folder, monkeypatch, mmap=True, num_device=num_device)
    np.testing.assert_array_equal(_logits(model), want)
    out = model.generate(np.array([[5, 17, 301]]), max_new_tokens=6, do_sample=False)
    assert np.asarray(out).shape == (1, 9)
    np.testing.assert_array_equal(_logits(model), want)  # after a reset, the same again
    for f, data in files.items():  # the emulator never writes into a param file
        assert f.read_bytes() == data, f


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_param_file_fails_the_same(
    hf_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mmap: bool, damage: str
) -> None:
    folder = Path(H.compile_model(hf_folder, tmp_path, 64))
    f = folder / "param" / "hbm_ch03.bin"
    if damage == "flip":
        H.flip_byte(f, f.stat().st_size - 5)
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-10])
    else:
        f.unlink()
    with pytest.raises(FormatError) as e:
        _load(folder, monkeypatch, mmap=mmap)
    msg = str(e.value)
    assert "hbm_ch03.bin" in msg and "recompile" in msg
    assert {"flip": "CRC-32 mismatch", "truncate": "wrong size", "delete": "missing"}[damage] in msg
