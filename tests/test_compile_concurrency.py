"""Compiles are safe together and after a kill: one compile of a folder at a time (the
folder's lock; a second one waits, says for whom, then proceeds), temporary names unique per
process, and what a killed compile left is removed by the next one (hyperdex/tools/locking.py,
hyperdex/formats/atomic.py).

The compiles under test run in subprocesses. Their conversion is held at a point the test
controls: the child script (test code, not the library) wraps the converter's tensor
stream so that it waits for a "go" file before the first tensor, by which time the lock is
held and ``hyperdex_model.bin``'s temporary file exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest
import torch

from hyperdex.errors import ConfigError
from hyperdex.formats.atomic import remove_stale_temps, stale_temps, temp_owner, temp_path
from hyperdex.paths import compiled_dir
from hyperdex.tools import AutoCompiler
from hyperdex.tools.locking import HOLDER_NAME, CompileLockTimeout, compile_lock, read_holder
from hyperdex.transformers import AutoModelForCausalLM

MAX_LENGTH = 64
PROMPT = torch.tensor([[3, 1, 4, 1, 5]])
WAIT_S = 120  # a bound on every wait of these tests (they take seconds)

# argv: model, prefix, fast_compile (0/1), go file ("-": run at full speed)
_CHILD = textwrap.dedent(
    """
    import logging, os, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    model, prefix, fast, go = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    if go != "-":
        import hyperdex.tools.converter as converter

        original = converter.AutoModelConverter._tensors

        def held(self, *args, **kw):
            while not os.path.exists(go):
                time.sleep(0.02)
            yield from original(self, *args, **kw)

        converter.AutoModelConverter._tensors = held
    from hyperdex.tools import AutoCompiler

    path = AutoCompiler().compile(
        model, max_length=64, prefix=prefix, fast_compile=fast, progress=False
    )
    print("COMPILED", path)
    """
)


def _start(model: Path, prefix: Path, log: Path, fast: bool = False, go: Optional[Path] = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HYPERDEX_PROGRESS="0")
    with open(log, "wb") as err:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(model), str(prefix), str(int(fast)), str(go or "-")],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )


def _until(condition: Callable[[], Any], what: str, procs: List[Any] = ()) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for p in procs:
            assert p.poll() is None, f"a compile ended (rc {p.returncode}) before {what}"
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _finish(proc: Any, log: Path) -> str:
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, f"rc {proc.returncode}\n{log.read_text()}"
    return out.decode()


def _tokens(folder: Path) -> list:
    lm = AutoModelForCausalLM.from_pretrained(folder, device_map={"lpu": 1})
    return lm.generate(PROMPT, max_new_tokens=8, do_sample=False)[0].tolist()


@pytest.fixture(scope="module")
def reference(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> list:
    """Tokens of a single compile."""
    prefix = tmp_path_factory.mktemp("single")
    path = AutoCompiler().compile(tiny_llama, max_length=MAX_LENGTH, prefix=prefix, progress=False)
    return _tokens(Path(path))


@pytest.mark.parametrize("second_fast", [False, True], ids=["redo", "fast_compile"])
def test_two_compiles_into_one_prefix(
    tiny_llama: Path, tmp_path: Path, reference: list, second_fast: bool
) -> None:
    """The second compile starts while the first holds the folder (mid-conversion): it waits,
    says once for whom, then proceeds (redoing the work, or finding it done with
    fast_compile). Both succeed, and the folder generates what a single compile does."""
    prefix, go = tmp_path / "prefix", tmp_path / "go"
    folder = compiled_dir(tiny_llama, prefix)
    first = _start(tiny_llama, prefix, tmp_path / "first.log", go=go)
    holder = _until(lambda: read_holder(folder), "the first compile to hold the lock", [first])
    assert holder["pid"] == first.pid
    second = _start(tiny_llama, prefix, tmp_path / "second.log", fast=second_fast)
    waiting = f"waiting for the compile of {folder} by process {first.pid}"
    _until(lambda: waiting in (tmp_path / "second.log").read_text(), "the message", [second])
    go.touch()
    assert f"COMPILED {folder}" in _finish(first, tmp_path / "first.log")
    assert f"COMPILED {folder}" in _finish(second, tmp_path / "second.log")
    log = (tmp_path / "second.log").read_text()
    assert log.count("waiting for the compile of") == 1, log
    if second_fast:
        assert "The converted checkpoint is up to date (fast_compile)" in log, log
    assert not (folder / HOLDER_NAME).exists()
    assert not list(stale_temps(folder, legacy=True))
    assert _tokens(folder) == reference


def test_two_compiles_at_full_speed(tiny_llama: Path, tmp_path: Path, reference: list) -> None:
    """Started together and not held anywhere: whichever order they run in, both succeed."""
    prefix = tmp_path / "prefix"
    procs = [_start(tiny_llama, prefix, tmp_path / f"{i}.log") for i in range(2)]
    for i, p in enumerate(procs):
        _finish(p, tmp_path / f"{i}.log")
    assert _tokens(compiled_dir(tiny_llama, prefix)) == reference


def test_a_compile_killed_during_conversion(
    tiny_llama: Path, tmp_path: Path, reference: list
) -> None:
    """SIGKILL mid-conversion leaves a model-sized temporary file (no handler runs); the lock
    goes with the process. The next compile removes the file, and succeeds."""
    prefix, go = tmp_path / "prefix", tmp_path / "go"
    folder = compiled_dir(tiny_llama, prefix)
    ckpt = folder / "ckpt"
    victim = _start(tiny_llama, prefix, tmp_path / "victim.log", go=go)

    def temp_file() -> list:
        return [p for p in ckpt.glob("hyperdex_model.bin.tmp.*")] if ckpt.is_dir() else []

    (left,) = _until(temp_file, "the conversion's temporary file", [victim])
    assert temp_owner(left.name) == victim.pid
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=WAIT_S)
    assert left.exists()  # what a killed compile leaves

    # A temporary file of a live process is never touched (here: a sleeping child's).
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        live = ckpt / f"tokenizer.json.tmp.{sleeper.pid}-0a0b0c0d"
        live.write_text("{}")
        path = AutoCompiler().compile(
            tiny_llama, max_length=MAX_LENGTH, prefix=prefix, progress=False, lock_timeout=30
        )
        assert not left.exists(), "the next compile kept the killed one's temporary file"
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert Path(path) == folder
    assert _tokens(folder) == reference
    live.unlink()
    AutoCompiler().compile(tiny_llama, max_length=MAX_LENGTH, prefix=prefix, progress=False)


def test_lock_timeout(tiny_llama: Path, tmp_path: Path) -> None:
    """With lock_timeout, a compile that cannot get the folder gives up, naming the holder."""
    prefix = tmp_path / "prefix"
    folder = compiled_dir(tiny_llama, prefix)
    folder.mkdir(parents=True)
    with compile_lock(folder, "someone else"):
        with pytest.raises(CompileLockTimeout) as e:
            AutoCompiler().compile(
                tiny_llama, max_length=MAX_LENGTH, prefix=prefix, progress=False, lock_timeout=0.2
            )
    msg = str(e.value)
    assert str(folder) in msg and f"process {os.getpid()}" in msg and "gave up" in msg
    with pytest.raises(ConfigError, match="lock_timeout"):
        AutoCompiler().compile(tiny_llama, prefix=prefix, lock_timeout=-1)


def test_the_wait_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In one process (two threads): the second waits for the first, with one message."""
    import threading

    order = []
    release = threading.Event()

    def first() -> None:
        with compile_lock(tmp_path, "first"):
            order.append("first in")
            release.wait(WAIT_S)
        order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    _until(lambda: order, "the first thread to hold the lock")
    threading.Timer(0.3, release.set).start()
    with caplog.at_level("INFO", logger="hyperdex"):
        with compile_lock(tmp_path, "second"):
            order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]
    waits = [r for r in caplog.records if "waiting for the compile of" in r.getMessage()]
    assert len(waits) == 1
    assert f"by process {os.getpid()}" in waits[0].getMessage()


def test_stale_temps(tmp_path: Path) -> None:
    """Temporary names carry the pid; only dead processes' files (and, under the lock, the
    pid-less names of older versions) are stale."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "sub").mkdir()
    mine = temp_path(tmp_path / "a.json")
    assert temp_owner(mine.name) == os.getpid()
    mine.write_text("")
    files = {
        "dead": tmp_path / "sub" / f"b.bin.tmp.{dead.pid}-deadbeef",
        "dead_cpp": tmp_path / f"hbm_ch00.bin.tmp.{dead.pid}",  # the C++ core's AtomicFile
        "legacy": tmp_path / "sub" / "hyperdex_model.bin.tmp-0123456789ab",
        "legacy_partial": tmp_path / "config.json.partial",
        "ordinary": tmp_path / "sub" / "tokenizer.json",
    }
    for f in files.values():
        f.write_text("")
    dead_dir = tmp_path / f"vcu128.tmp.{dead.pid}-00ff"
    (dead_dir / "inner").mkdir(parents=True)
    assert {p.name for p in stale_temps(tmp_path)} == {
        files["dead"].name,
        files["dead_cpp"].name,
        dead_dir.name,
    }
    removed = remove_stale_temps(tmp_path, legacy=True)
    assert len(removed) == 5
    assert mine.exists() and files["ordinary"].exists() and not dead_dir.exists()


def test_failed_write_leaves_no_temp(tmp_path: Path) -> None:
    from hyperdex.formats.atomic import write_json_atomic

    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_copy_local_uses_process_unique_temp_names(tiny_llama: Path, tmp_path: Path) -> None:
    """fetch links each file under <name>.tmp.<pid>-<random> (two processes never share a
    temporary name) and leaves none behind."""
    from hyperdex.tools.fetch import copy_local

    dst = tmp_path / "ckpt"
    copy_local(tiny_llama, dst)
    copy_local(tiny_llama, dst)
    assert sorted(p.name for p in dst.iterdir()) == sorted(
        p.name for p in tiny_llama.iterdir() if not p.name.startswith(".")
    )
    shutil.rmtree(dst)
