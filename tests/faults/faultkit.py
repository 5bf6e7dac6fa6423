"""Shared pieces of the fault-injection suite (issue 8): run ``mer`` as a subprocess, write real
media / clip tables / tiny models, and the uniform assertions every fault case makes.

Every case asserts the same four things through the real command line:

1. the message names the clip and the problem (``failed clip NAME: REASON`` in the report),
2. the exit code is non-zero when anything failed,
3. the ledger lists the clip with that problem (``mer store info --json`` -> ``failed``),
4. ``mer store check`` passes afterwards.

:func:`assert_failures` makes all four at once. Imported by the ``test_faults_*`` modules (pytest
puts this folder on ``sys.path``); ``tests/conftest.py`` stays the one conftest.
"""

from __future__ import annotations

import atexit
import csv
import functools
import json
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from conftest import HANG_S, mer_cli, one_thread_env
from conftest import write_csv as write_table  # noqa: F401 - the fault tests import it from here

SR = 16000
TIMEOUT = HANG_S  # a hang guard only (see conftest)


def env(**extra: str) -> dict[str, str]:
    """Subprocess environment: one math thread (two cores are shared), wide rich output."""
    return one_thread_env(COLUMNS="200", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", **extra)


def mer(*args: object, preexec_fn: Callable[[], Any] | None = None, cwd: Path | None = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the installed ``mer`` console script."""
    return subprocess.run([*mer_cli(), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False,
                          env=env(), preexec_fn=preexec_fn, cwd=cwd)


def mer_popen(*args: object, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``mer`` without waiting (to kill it, or to run two at once)."""
    return subprocess.Popen([*mer_cli(), *map(str, args)], env=env(), **kw)


def flat(res: subprocess.CompletedProcess[str]) -> str:
    """stdout + stderr with rich's box drawing and line breaks collapsed to single spaces."""
    return squash(res.stdout + " " + res.stderr)


def squash(text: str) -> str:
    return re.sub(r"[\s\u2500-\u257f]+", " ", text)  # whitespace and box drawing


def ok(res: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert res.returncode == code, f"exit {res.returncode} (wanted {code})\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    return res


# ---- the uniform assertions --------------------------------------------------------------------
def store_info(store: Path) -> dict[str, dict[str, Any]]:
    """``mer store info --json`` keyed by set."""
    res = ok(mer("store", "info", store, "--json"))
    return {row["set"]: row for row in json.loads(res.stdout)}


def assert_check_passes(store: Path) -> None:
    res = mer("store", "check", store)
    assert res.returncode == 0 and "0 problems found" in res.stdout, res.stdout + res.stderr


def assert_failures(res: subprocess.CompletedProcess[str], store: Path, key: str,
                    expected: dict[str, str], *, exact: bool = True) -> dict[str, str]:
    """The four assertions of a fault case; ``expected`` maps clip -> text its reason must contain.

    With ``exact`` the ledger's failures are exactly the expected clips. Returns the ledger's failures.
    """
    assert res.returncode != 0, f"a run with failed clips must exit non-zero\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    text = flat(res)
    failed = store_info(store)[key]["failed"]
    if exact:
        assert set(failed) == set(expected), f"ledger failures {sorted(failed)} != {sorted(expected)}"
    for clip, problem in expected.items():
        assert clip in failed, f"{clip} not in the ledger's failures: {failed}"
        assert problem in failed[clip], f"{clip}: {problem!r} not in {failed[clip]!r}"
        assert f"failed clip {clip}: {squash(failed[clip])}" in text, f"{clip} / {failed[clip]!r} not reported:\n{text}"
    assert_check_passes(store)
    return failed


def report_counts(res: subprocess.CompletedProcess[str]) -> tuple[int, int, int, int]:
    """(clips, done, skipped, failed) from the summary table of ``mer extract``."""
    m = re.search(r"clips done skipped failed seconds clips/s (\d+) (\d+) (\d+) (\d+) [\d.]+ [\d.]+", flat(res))
    assert m, flat(res)
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


# ---- inputs -------------------------------------------------------------------------------------
def write_wav(path: Path, samples: np.ndarray, rate: int = SR) -> Path:
    """Mono 16-bit PCM WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def tone(seconds: float, hz: float = 300.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return 0.3 * np.sin(2 * np.pi * hz * t) + 0.05 * np.random.default_rng(seed).standard_normal(len(t))


def wav_clips(folder: Path, n: int, seconds: float = 0.5, prefix: str = "c") -> list[dict[str, str]]:
    """``n`` distinct short WAV clips and their clip-table rows (paths relative to ``folder``'s parent)."""
    rows = []
    for i in range(n):
        name = f"{prefix}{i:05d}"
        write_wav(folder / f"{name}.wav", tone(seconds, 200 + i % 500, seed=i))
        rows.append({"name": name, "audio": f"{folder.name}/{name}.wav"})
    return rows


def feature_table(path: Path, names: list[str], dim: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """A CSV of per-clip features (the ``table`` extractor's input); returns the vectors."""
    rng = np.random.default_rng(seed)
    vecs = {n: rng.standard_normal(dim).astype(np.float32) for n in names}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", *[f"f{j}" for j in range(dim)]])
        for n, v in vecs.items():
            w.writerow([n, *[f"{x:.6f}" for x in v]])
    return {n: np.array([float(f"{x:.6f}") for x in v], np.float32) for n, v in vecs.items()}


# ---- tiny models ----------------------------------------------------------------------------------
_TINY_ROOT: list[Path] = []


@functools.cache
def tiny(name: str) -> Path:
    """Folder of a tiny random model of a real architecture, built once per test session.

    ``name`` is ``hubert``, ``bert`` or ``hfclip``, optionally ``kind:seed`` for other weights; the
    folder is called ``kind`` whatever the seed, since the default set key is made from it.
    """
    import tiny_models

    if not _TINY_ROOT:
        _TINY_ROOT.append(Path(tempfile.mkdtemp(prefix="mer-faults-tiny-")))
        atexit.register(shutil.rmtree, _TINY_ROOT[0], True)
    kind, _, seed = name.partition(":")
    d = _TINY_ROOT[0] / name.replace(":", "-") / kind
    d.mkdir(parents=True)
    build = {"hubert": tiny_models.build_hubert, "bert": tiny_models.build_bert,
             "hfclip": tiny_models.build_hf_clip}[kind]
    return build(d, seed=int(seed)) if seed else build(d)
