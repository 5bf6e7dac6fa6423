"""Soak test of resume: SIGKILL ``mer extract`` at random moments, again and again, then finish.

Default mode (``--mode default``). ``--n`` small synthetic clips (0.5 s, 16 kHz mono WAV, a tone
plus noise, each distinct) go through ``mer extract audio`` with a tiny random HuBERT
(``hf-speech``, 2 layers, hidden 32, saved to a temporary folder and loaded by path;
``OMP_NUM_THREADS=1``), committing every ``--flush-rows`` clips. First one uninterrupted run makes
the reference store and measures the command's start-up time and extraction rate. Then the same
command runs into a second store ``--kills`` times, each time killed with SIGKILL: a quarter of the
kills (``--early``) at U(0.1, 0.9) times the shortest start-up seen so far (while Python, torch and
the model load, or the previous run's write-ahead segments merge); the others during extraction,
once the run has committed about U(0, 2) times a ``1 / (kills left + 1)`` share of the clips still
to do, plus U(0, 1) times the time of one segment, so that kills fall anywhere in a flush cycle
(mid-forward, mid-segment-write, mid-merge) and spread over the whole job. A last run finishes the
rest.

The other modes use variable-length clips (``--min-seconds`` to ``--max-seconds``, 0.3-2.0 s, every
length distinct) written at 8 kHz and decoded at 8 kHz (``--sample-rate 8000``), so hf-speech
resamples each clip to 16 kHz and records the per-clip extra ``resampled_from``; with
``-O window_s=1.0`` the clips longer than 1 s run in two windows and record ``windows`` (NaN for
the others), stored as ``clip_resampled_from`` / ``clip_windows`` arrays. Each has its own
uninterrupted reference run (shared by modes with the same level and size).

* ``varlen``: frame-level output (``--level frame``: per-frame vectors and times plus the extras),
  killed and resumed as the default mode.
* ``force``: a complete frame-level store (a copy of the reference) is redone again and again with
  ``--only SUBSET --force`` (a random subset of 20-70 % of the clips per run, same provenance),
  each run SIGKILLed during start-up or after a random part of its subset was written
  (rows committed plus rows in write-ahead segments); a last forced subset run finishes.
* ``concurrent``: two ``mer extract`` processes start together into one fresh store (utterance
  level, extras) over overlapping ``--only`` lists (A = clips 0-60 %, B = 40-100 %), each with its
  own clip table that lists the shared 40-60 % first (the stage works in table order), so both
  extract those clips at the same time; each is killed at its own random moments (as in the
  default mode, counting the clips of its own list) and restarted at once, ``--kills`` kills split
  between the two, until both have finished by themselves.
* ``dask``: ``--workers 2`` (a local dask cluster of worker processes, utterance level, extras),
  killed and resumed as the default mode; every run starts in its own session and a kill is
  ``os.killpg`` of the whole group, so the scheduler and the worker processes die with it.

Every process is started in its own session and killed as a group; leftover processes are killed
on the way out (``try/finally``), and the work folder is removed unless ``--keep``.

Then the check, per mode: a clip is *lost* when the table has it and the final store has not
committed it, or a failure is recorded for it; *duplicated* when its name is in more than one live
row (``names[:n_rows]``, as a plain Zarr reader sees them, rows named ``""`` skipped); unknown
clips, pending segments, ``check_store`` problems and a ``redone`` left in the ledger are printed
too. ``max_abs_diff`` compares with the reference: the vectors (frame level: the frames, the
frame counts must match), the frame times, and the extras (NaN must meet NaN). Resumed runs batch
other clips together, which can move a float16 value by one unit in the last place at most; the
count of values off by more than that is printed.

Output: one line per kill, then the figures. With several modes (``--all-modes``: the default mode
plus the four others, at the smaller sizes of ``ALL_MODES_SIZES`` unless ``--n``/``--kills`` are
given), the wall time of each mode, then per mode ``soak_<mode>_unknown_clips``,
``soak_<mode>_duplicated_clips``, ``soak_<mode>_max_abs_diff`` and ``soak_<mode>_lost_clips``, then
the sums (``soak_max_abs_diff``: the largest); the last line is always ``soak_lost_clips: N``
(goal 0). The default mode alone prints the four summary lines it always printed.

    python benchmarks/soak_resume.py                      # 2,000 clips, 20 kills, ~3-4 min on 2 cores
    python benchmarks/soak_resume.py --n 500 --kills 5    # quick look
    python benchmarks/soak_resume.py --flush-rows 256     # the CLI's default commit size
    python benchmarks/soak_resume.py --mode force --n 60 --kills 3
    python benchmarks/soak_resume.py --all-modes          # all five modes, smaller sizes, ~11 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from mer.store import FeatureStore
from mer.store.check import check_store
from mer.store.segments import list_segments, read_segment_names

from extract_scaling import write_clips, write_table, write_wav  # benchmarks/ is on sys.path when run as a script

KEY = "audio/soak"
MODES = ("default", "varlen", "force", "concurrent", "dask")
ALONE_SIZES = {"default": (2000, 20), "varlen": (600, 12), "force": (600, 12), "concurrent": (600, 12),
               "dask": (400, 8)}  # (clips, kills) when one mode runs
ALL_MODES_SIZES = {"default": (1000, 12), "varlen": (400, 10), "force": (400, 10), "concurrent": (400, 12),
                   "dask": (400, 10)}  # (clips, kills) under --all-modes
LEVELS = {"varlen": "frame", "force": "frame", "concurrent": "utt", "dask": "utt"}
VAR_RATE = 8000  # sample rate of the variable-length clips (hf-speech resamples them to 16 kHz)
VAR_WINDOW_S = 1.0  # hf-speech window: clips longer than this record ``windows``

LIVE: list[subprocess.Popen] = []  # every process started, for the clean-up on the way out


# ---- data and model ----------------------------------------------------------------------------
def make_hubert(folder: Path) -> Path:
    """A tiny random HuBERT (2 layers, hidden 32, group-norm conv encoder) saved with save_pretrained."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="group")
    out = folder / "hubert-tiny-random"
    HubertModel(cfg).save_pretrained(out)
    return out


def write_varlen_clips(folder: Path, n: int, lo: float, hi: float) -> list[str]:
    """``n`` distinct mono 16-bit WAV files at 8 kHz, of distinct lengths from ``lo`` to ``hi`` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    lengths = np.linspace(lo * VAR_RATE, hi * VAR_RATE, n).astype(np.int64)
    if len(np.unique(lengths)) < n:
        raise SystemExit(f"{n} clips cannot have distinct lengths between {lo} and {hi} s at {VAR_RATE} Hz")
    lengths = rng.permutation(lengths)
    names = []
    for i, length in enumerate(lengths):
        t = np.arange(int(length)) / VAR_RATE
        x = 0.3 * np.sin(2 * np.pi * (150 + i % 300) * t) + 0.05 * rng.standard_normal(len(t))
        write_wav(folder / f"v{i:06d}.wav", x, VAR_RATE)
        names.append(f"v{i:06d}")
    return names


def write_varlen_table(path: Path, names: list[str]) -> Path:
    path.write_text("name,audio\n" + "".join(f"{n},varclips/{n}.wav\n" for n in names))
    return path


def mer_command(table: Path, store: Path, model: Path, flush_rows: int, batch: int) -> list[str]:
    script = Path(sys.executable).parent / "mer"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "mer.pipeline.cli"]
    return [*prefix, "extract", "audio", str(table), "--store", str(store), "-e", "hf-speech", "-m", str(model),
            "-O", "layers=last2", "--set", KEY.split("/")[1], "--batch-size", str(batch),
            "--flush-rows", str(flush_rows)]


def var_command(table: Path, store: Path, model: Path, flush_rows: int, batch: int, level: str) -> list[str]:
    """The variable-length clips' command: 8 kHz decode (extra ``resampled_from``), 1 s windows (``windows``)."""
    return [*mer_command(table, store, model, flush_rows, batch), "--level", level, "--sample-rate", str(VAR_RATE),
            "-O", f"window_s={VAR_WINDOW_S}"]


# ---- watching a store from outside ---------------------------------------------------------------
def done_count(store: Path) -> tuple[int, int]:
    """(clips durably done, pending segments) of the soak set, read from another process's view."""
    if not (store / "zarr.json").exists() or KEY not in FeatureStore(store):
        return 0, 0
    fs = FeatureStore(store)[KEY]
    pending = len(list(fs.pending_dir.glob("*.npz"))) if fs.pending_dir.is_dir() else 0
    return len(fs.done_names()), pending


def safe_done_count(store: Path) -> tuple[int, int]:
    """``done_count`` that survives reading a store while other processes write it (retries, then 0s)."""
    for _ in range(20):
        try:
            return done_count(store)
        except Exception:  # noqa: BLE001 - a file replaced between listing and reading it
            time.sleep(0.02)
    return 0, 0


def safe_done_names(store: Path) -> set[str]:
    """Done clip names of the soak set (empty while there is none), read while others write."""
    for _ in range(20):
        try:
            if not (store / "zarr.json").exists() or KEY not in FeatureStore(store):
                return set()
            return FeatureStore(store)[KEY].done_names()
        except Exception:  # noqa: BLE001
            time.sleep(0.02)
    return set()


def written_rows(store: Path) -> int:
    """Rows committed (``n_rows``, superseded ones included) plus rows in write-ahead segments.

    Grows while a ``--force`` run redoes clips that are already done (``done_count`` does not)."""
    for _ in range(20):
        try:
            if not (store / "zarr.json").exists() or KEY not in FeatureStore(store):
                return 0
            fs = FeatureStore(store)[KEY]
            meta = fs.meta()
            rows, merged = int(meta["n_rows"]), set(meta.get("last_consolidation", []))
            for p in list_segments(fs.pending_dir):
                if p.stem in merged:  # merged by the last commit, not deleted yet: counted in n_rows
                    continue
                try:
                    rows += len(read_segment_names(p)[0])
                except Exception:  # noqa: BLE001 - merged and deleted meanwhile
                    pass
            return rows
        except Exception:  # noqa: BLE001
            time.sleep(0.02)
    return 0


def report_counts(stdout: str) -> str:
    """``done D, skipped S`` from the report table of ``mer extract`` (empty when there is none)."""
    flat = re.sub(r"[\s\u2500-\u257f]+", " ", stdout)
    m = re.search(r"clips done skipped failed seconds clips/s (\d+) (\d+) (\d+) (\d+) ", flat)
    return f"; its report: done {m.group(2)}, skipped {m.group(3)}, failed {m.group(4)}" if m else ""


def stage_seconds(stdout: str) -> float:
    """The stage's own extraction time from the report table of ``mer extract``."""
    flat = re.sub(r"[\s\u2500-\u257f]+", " ", stdout)
    m = re.search(r"clips done skipped failed seconds clips/s \d+ \d+ \d+ \d+ ([\d.]+) ", flat)
    if not m:
        raise SystemExit(f"cannot read the report of mer extract:\n{stdout[-2000:]}")
    return float(m.group(1))


# ---- processes -----------------------------------------------------------------------------------
def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp ...
        if len(rest) > 2 and int(rest[2]) == pgid and rest[0] != "Z":
            out.append(int(d.name))
    return out


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so a kill can take its whole process group), output to ``log``."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
    LIVE.append(proc)
    return proc


def kill_group(proc: subprocess.Popen) -> int:
    """SIGKILL ``proc``'s process group, reap it, wait for the group to be gone; returns others killed."""
    others = [p for p in group_members(proc.pid) if p != proc.pid]
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc in LIVE:
        LIVE.remove(proc)
    return len(others)


def finished_group(proc: subprocess.Popen) -> int:
    """After ``proc`` exited by itself: kill whatever of its group is left (a dask worker); returns how many."""
    deadline = time.monotonic() + 3.0  # a resource tracker or a nanny's worker may still be on its way out
    while (left := group_members(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        print(f"  left behind by pid {proc.pid} (exit {proc.returncode}): "
              + "; ".join(f"{p}: {_cmdline(p)}" for p in left), flush=True)
        kill_group(proc)
    elif proc in LIVE:
        LIVE.remove(proc)
    return len(left)


def _cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
                .strip() or "?")
    except OSError:
        return "gone"


def cleanup() -> None:
    for proc in list(LIVE):
        kill_group(proc)


def run_to_end(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[int, float, str]:
    """Run ``cmd`` to its end (its group killed on the way out); (exit code, wall seconds, output)."""
    t0 = time.perf_counter()
    proc = start(cmd, env, log, cwd)
    proc.wait()
    wall = time.perf_counter() - t0
    left = finished_group(proc)
    if left:
        print(f"  ({left} processes of the run were still alive after it exited; killed)", flush=True)
    return proc.returncode, wall, log.read_text(errors="replace")


def _wait(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``proc``; True when it exited by itself."""
    try:
        proc.wait(timeout=max(0.0, seconds))
        return True
    except subprocess.TimeoutExpired:
        return False


# ---- the check ---------------------------------------------------------------------------------
@dataclass
class Result:
    mode: str
    lost: int = 0
    duplicated: int = 0
    unknown: int = 0
    diff: float = float("nan")
    beyond_ulp: int = 0
    wall: float = 0.0
    notes: list[str] = field(default_factory=list)


def _nan_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Max abs difference with NaN == NaN (NaN against a number counts as inf), and the mismatches."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isnan(a) & np.isnan(b)
    one = np.isnan(a) ^ np.isnan(b)
    d = np.where(both, 0.0, np.abs(a - b))
    d[one] = np.inf
    return (float(d.max()) if d.size else 0.0), int((d > 0).sum())


def compare(ref: Path, soak: Path, names: list[str], mode: str, ref_dtype: str = "float16") -> Result:
    """Check the soaked store against the table ``names`` and the reference store; prints the details."""
    res = Result(mode)
    a, b = FeatureStore(ref)[KEY], FeatureStore(soak)[KEY]
    meta = b.meta()
    raw = np.asarray(zarr.open_group(str(b.path), mode="r")["names"][: int(meta["n_rows"])])
    live = [str(x) for x in raw if str(x) != ""]
    got = b.names()
    want = set(names)
    failures = b.failures()
    lost = sorted((want - set(got)) | (set(failures) & want))
    res.lost, res.unknown = len(lost), len(set(live) - want)
    res.duplicated = len(live) - len(set(live))
    pending = len(list_segments(b.pending_dir))
    problems = check_store(FeatureStore(soak))
    common = sorted(want & set(got))
    level = meta["level"]
    diffs = {}
    if level == "utt":
        x_ref, x_soak = a.read(common), b.read(common)
        diffs["vectors"] = float(np.abs(x_ref.astype(np.float32) - x_soak.astype(np.float32)).max()) if common else 0.0
        exact = int((x_ref == x_soak).all(axis=1).sum())
        ulp = np.spacing(np.abs(x_ref).astype(ref_dtype)).astype(np.float64)
        res.beyond_ulp = int((np.abs(x_ref.astype(np.float64) - x_soak.astype(np.float64)) > ulp).sum())
        what = "vectors"
    else:
        f_ref, f_soak = a.read(common), b.read(common)
        t_ref, t_soak = a.read_times(common), b.read_times(common)
        bad_len = [n for n, p, q in zip(common, f_ref, f_soak) if p.shape != q.shape]
        ok = [i for i, (p, q) in enumerate(zip(f_ref, f_soak)) if p.shape == q.shape]
        exact = sum(int(np.array_equal(f_ref[i], f_soak[i]) and np.array_equal(t_ref[i], t_soak[i])) for i in ok)
        vr = np.concatenate([f_ref[i] for i in ok]) if ok else np.zeros((0, 1), np.float16)
        vs = np.concatenate([f_soak[i] for i in ok]) if ok else np.zeros((0, 1), np.float16)
        diffs["frames"] = float(np.abs(vr.astype(np.float32) - vs.astype(np.float32)).max()) if len(vr) else 0.0
        ulp = np.spacing(np.abs(vr).astype(ref_dtype)).astype(np.float64)
        res.beyond_ulp = int((np.abs(vr.astype(np.float64) - vs.astype(np.float64)) > ulp).sum())
        tr = np.concatenate([t_ref[i] for i in ok]) if ok else np.zeros(0)
        ts = np.concatenate([t_soak[i] for i in ok]) if ok else np.zeros(0)
        diffs["times"] = _nan_diff(tr, ts)[0]
        if bad_len:
            diffs["frame counts"] = float("inf")
            res.notes.append(f"{len(bad_len)} clips with another frame count than the reference, e.g. {bad_len[:5]}")
        what = "clips (frames and times)"
    ex_ref, ex_soak = a.meta().get("extras", []), meta.get("extras", [])
    if ex_ref != ex_soak:
        res.notes.append(f"extras recorded: reference {ex_ref}, soak {ex_soak}")
        diffs["extras"] = float("inf")
    for key in ex_ref:
        if key in ex_soak and common:
            d, n_bad = _nan_diff(a.read_extra(key, common), b.read_extra(key, common))
            diffs[f"extra {key}"] = d
            if n_bad:
                res.notes.append(f"extra {key!r}: {n_bad} clips differ from the reference")
    res.diff = max(diffs.values()) if diffs else float("nan")
    print(f"clips in the table: {len(names)}; in the store: {len(got)} ({len(set(got))} distinct); "
          f"live rows {len(live)} of n_rows {meta['n_rows']} ({meta.get('n_superseded', 0)} superseded)")
    print(f"failures recorded: {len(failures)}; pending segments left: {pending}; "
          f"check_store problems: {len(problems)}; redone left in the ledger: {'redone' in meta}")
    for p in problems[:10]:
        print(f"  {p}")
    if lost:
        print(f"  lost: {lost[:20]}{' ...' if len(lost) > 20 else ''}")
    if failures:
        print(f"  failures: {list(failures.items())[:5]}")
    print(f"{what} equal to the uninterrupted run: {exact} of {len(common)} bit for bit; "
          f"values off by more than one float16 unit: {res.beyond_ulp}")
    print("max abs diff: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
          + (f"; extras compared: {', '.join(ex_ref)}" if ex_ref else "; no extras recorded"))
    for note in res.notes:
        print(f"  {note}")
    if problems or pending or "redone" in meta:
        res.notes.append("store not clean")
    if not ex_ref and mode != "default":
        res.notes.append("no extras recorded")
    return res


# ---- kill loops ----------------------------------------------------------------------------------
@dataclass
class Job:
    """What one mode runs: commands, stores and the reference's timings."""

    mode: str
    work: Path
    env: dict[str, str]
    names: list[str]
    ref: Path
    soak: Path
    cmd: list[str]
    startup: float
    rate: float
    flush_rows: int
    kills: int
    early: float
    rng: np.random.Generator


def soak_serial(job: Job, *, plan=None, progress=None) -> None:
    """The default kill loop: ``job.kills`` runs of one command, each SIGKILLed, then a finishing run.

    ``plan(k)`` -> (command, clips this run has to do) and ``progress()`` -> clips written so far
    replace the resume logic (``done_count``) in ``force`` mode."""
    n, rng, rate = len(job.names), job.rng, job.rate
    resume = plan is None
    progress = progress or (lambda: safe_done_count(job.soak)[0])
    landed = 0
    phases: dict[str, int] = {}
    startups = [job.startup]  # seconds from launch to extracting, as observed run by run
    t_soak = time.perf_counter()
    for k in range(job.kills):
        done = progress()
        cmd, todo = (job.cmd, n - done) if resume else plan(k)
        proc = start(cmd, job.env, job.work / f"{job.mode}-run{k + 1:02d}.log", job.work)
        t_start = time.perf_counter()
        if rng.random() < job.early:  # while Python, torch and the model load, or segments merge
            phase, delay = "start-up", min(startups) * rng.uniform(0.1, 0.9)
            finished = _wait(proc, delay)
        else:  # a random moment of extraction, after about a U(0, 2) share of the clips left
            phase = "extraction"
            share = todo / (job.kills - k + 1) if resume else todo / 2
            target = done + max(1, int(rng.uniform(0, 2) * share))
            while proc.poll() is None and progress() <= done:
                time.sleep(0.02)
            startups.append(time.perf_counter() - t_start - job.flush_rows / rate)
            while proc.poll() is None and progress() < target:
                time.sleep(0.02)
            # then up to one more segment's worth of time, so kills fall anywhere in a flush cycle
            finished = _wait(proc, rng.uniform(0, job.flush_rows / rate))
        others = finished_group(proc) if finished else kill_group(proc)
        now, pending = safe_done_count(job.soak)
        landed += not finished
        phases[phase] = phases.get(phase, 0) + (not finished)
        extra = f", {progress() - done:+4d} rows written" if not resume else ""
        print(f"kill {k + 1:2d}/{job.kills} ({phase:10s}) at {time.perf_counter() - t_start:5.2f} s: "
              + (f"the run had finished (exit {proc.returncode}); " if finished else "")
              + f"{now:5d} clips committed ({now - done if resume else 0:+4d}{extra}), {pending:2d} pending segments"
              + (f", {others} processes of its group killed with it" if others and not finished else ""), flush=True)
        if finished and proc.returncode != 0:
            print(f"  the run failed by itself (exit {proc.returncode}); its output ends:\n"
                  + _tail(job.work / f"{job.mode}-run{k + 1:02d}.log"), flush=True)
        if finished and resume:
            break
    cmd = job.cmd if resume else plan(job.kills)[0]
    rc, wall, out = run_to_end(cmd, job.env, job.work / f"{job.mode}-finish.log", job.work)
    if rc != 0:
        print(f"finishing run FAILED (exit {rc}); its output ends:\n{out[-3000:]}", flush=True)
    print(f"kills landed: {landed} of {job.kills} ({phases.get('start-up', 0)} during start-up, "
          f"{phases.get('extraction', 0)} during extraction)")
    print(f"finishing run: {wall:.1f} s; soak total {time.perf_counter() - t_soak:.1f} s", flush=True)


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no output)"


@dataclass
class Slot:
    label: str
    only: Path
    names: set[str]
    kills: int
    runs: int = 0
    killed: int = 0
    failed: int = 0
    finished: bool = False
    proc: subprocess.Popen | None = None
    t_start: float = 0.0
    deadline: float = float("inf")
    target: int | None = None
    phase: str = ""
    work: Path = Path(".")
    cmd: list[str] = field(default_factory=list)

    def log(self) -> Path:
        return self.work / f"concurrent-{self.label}{self.runs:02d}.log"


def soak_concurrent(job: Job, slots: list[Slot]) -> None:
    """Two processes at once over overlapping clip lists, each killed at its own moments and restarted.

    Like the default mode, per process: a share of the kills (``--early``) at U(0.1, 0.9) x the
    reference run's start-up, the others once the clips of its list done (by either process) have
    grown by U(0, 2) x a ``1 / (its kills left + 1)`` share of its list's clips left, plus U(0, 1)
    x the time of one segment."""
    rng, rate = job.rng, job.rate
    t_soak = time.perf_counter()
    while not all(s.finished for s in slots):
        now = time.perf_counter()
        done = safe_done_names(job.soak)
        for s in slots:
            if s.finished or s.proc is not None:
                continue
            if s.failed >= 3:
                print(f"{s.label}: failed by itself {s.failed} times; giving up on it", flush=True)
                s.finished = True
                continue
            s.runs += 1
            s.proc = start(s.cmd, job.env, s.log(), job.work)
            s.t_start, s.deadline, s.target = now, float("inf"), None
            left = s.kills - s.killed
            if left <= 0:
                s.phase = "to the end"
            elif rng.random() < job.early:
                s.deadline, s.phase = now + job.startup * rng.uniform(0.1, 0.9), "start-up"
            else:
                mine = len(s.names & done)
                s.target = mine + max(1, int(rng.uniform(0, 2) * (len(s.names) - mine) / (left + 1)))
                s.phase = "extraction"
        time.sleep(0.05)
        done = safe_done_names(job.soak)
        for s in slots:
            if s.proc is None:
                continue
            t = time.perf_counter()
            if s.target is not None and len(s.names & done) >= s.target:
                # then up to one more segment's worth of time, so kills fall anywhere in a flush cycle
                s.target, s.deadline = None, t + rng.uniform(0, job.flush_rows / rate)
            if s.proc.poll() is not None:
                finished_group(s.proc)
                rc = s.proc.returncode
                print(f"{s.label} run {s.runs:2d} ({s.phase:10s}) exited by itself at {t - s.t_start:5.2f} s "
                      f"(exit {rc}); {len(done):5d} clips done{report_counts(_tail(s.log(), 20000))}", flush=True)
                if rc == 0:
                    s.finished = True
                else:
                    s.failed += 1
                    print("  its output ends:\n" + _tail(s.log()), flush=True)
                s.proc = None
            elif t >= s.deadline:
                kill_group(s.proc)
                s.killed += 1
                n_done, pending = safe_done_count(job.soak)
                print(f"{s.label} kill {s.killed:2d}/{s.kills} ({s.phase:10s}) at {t - s.t_start:5.2f} s: "
                      f"{n_done:5d} clips done ({len(s.names & done)} of its {len(s.names)}), "
                      f"{pending:2d} pending segments", flush=True)
                s.proc = None
    print(f"kills landed: {sum(s.killed for s in slots)} of {sum(s.kills for s in slots)} "
          f"({', '.join(f'{s.label} {s.killed} of {s.kills} in {s.runs} runs' for s in slots)}); "
          f"soak total {time.perf_counter() - t_soak:.1f} s", flush=True)


# ---- modes ---------------------------------------------------------------------------------------
class Bench:
    """Shared material of one invocation: clips, model, reference stores (made once, reused by modes)."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                    "DASK_TEMPORARY_DIRECTORY": str(work / "dask-scratch")}  # killed clusters leave files there
        self.model: Path | None = None
        self.fixed: list[str] = []
        self.var: list[str] = []
        self.refs: dict[tuple, tuple[Path, float, float]] = {}

    def get_model(self) -> Path:
        if self.model is None:
            self.model = make_hubert(self.work)
        return self.model

    def reference(self, kind: str, n: int, level: str, table: Path, cmd_of) -> tuple[Path, float, float]:
        """(store, start-up s, clips/s) of the uninterrupted run of ``kind``/``level`` over ``n`` clips."""
        key = (kind, n, level)
        if key not in self.refs:
            ref = self.work / f"ref-{kind}-{level}-{n}.zarr"
            rc, wall, out = run_to_end(cmd_of(ref), self.env, self.work / f"ref-{kind}-{level}-{n}.log", self.work)
            if rc != 0:
                raise SystemExit(f"reference run failed ({rc}):\n{out[-3000:]}")
            extract_s = stage_seconds(out)
            startup = max(0.5, wall - extract_s)
            rate = n / max(extract_s, 1e-3)
            print(f"uninterrupted run: {wall:.1f} s wall, start-up {startup:.1f} s, {rate:.0f} clips/s", flush=True)
            self.refs[key] = (ref, startup, rate)
        return self.refs[key]

    def run_mode(self, mode: str, n: int, kills: int) -> Result:
        args, work = self.args, self.work
        rng = np.random.default_rng(args.seed) if mode == "default" else \
            np.random.default_rng([args.seed, MODES.index(mode)])
        t0 = time.perf_counter()
        if mode == "default":
            if len(self.fixed) < n:
                self.fixed = write_clips(work / "clips", n, args.seconds)
            names = self.fixed[:n]
            table = write_table(work / f"clips-{n}.csv", names)
            model = self.get_model()
            print(f"{n} clips of {args.seconds} s and a tiny HuBERT in {time.perf_counter() - t0:.1f} s "
                  f"({work})", flush=True)
            level, kind = "utt", "fixed"
            cmd_of = lambda store: mer_command(table, store, model, args.flush_rows, args.batch)  # noqa: E731
        else:
            if len(self.var) < n:
                self.var = write_varlen_clips(work / "varclips", n, args.min_seconds, args.max_seconds)
            names = self.var[:n]
            table = write_varlen_table(work / f"varclips-{n}.csv", names)
            model = self.get_model()
            level, kind = args.level or LEVELS[mode], "var"
            print(f"{n} clips of {args.min_seconds}-{args.max_seconds} s at {VAR_RATE} Hz, level {level}, "
                  f"and a tiny HuBERT ready in {time.perf_counter() - t0:.1f} s ({work})", flush=True)
            cmd_of = lambda store: var_command(table, store, model, args.flush_rows, args.batch, level)  # noqa: E731
        ref, startup, rate = self.reference(kind, n, level, table, cmd_of)
        soak = work / f"soak-{mode}.zarr"
        shutil.rmtree(soak, ignore_errors=True)
        cmd = cmd_of(soak)
        if mode == "dask":
            cmd = [*cmd, "--workers", "2"]
        job = Job(mode, work, self.env, names, ref, soak, cmd, startup, rate, args.flush_rows, kills, args.early, rng)
        if mode in ("default", "varlen", "dask"):
            soak_serial(job)
        elif mode == "force":
            shutil.copytree(ref, soak)  # the complete store the forced runs redo
            base = written_rows(soak)
            print(f"complete store copied from the reference ({base} rows)", flush=True)

            def plan(k: int) -> tuple[list[str], int]:
                size = max(1, int(rng.uniform(0.2, 0.7) * n))
                subset = sorted(rng.choice(n, size=size, replace=False).tolist())
                only = work / f"force-only-{k + 1:02d}.txt"
                only.write_text("".join(f"{names[i]}\n" for i in subset))
                return [*cmd, "--only", str(only), "--force"], size

            soak_serial(job, plan=plan, progress=lambda: written_rows(soak))
        elif mode == "concurrent":
            a_end, b_start = int(round(0.6 * n)), int(round(0.4 * n))
            slots = []
            both = names[b_start:a_end]
            for label, part, k in (("A", both + names[:b_start], kills // 2), ("B", both + names[a_end:],
                                                                               kills - kills // 2)):
                # each its own table, the shared clips first, so both extract them at the same time
                only = work / f"concurrent-only-{label}.txt"
                only.write_text("".join(f"{x}\n" for x in part))
                own = write_varlen_table(work / f"concurrent-table-{label}.csv", part)
                slot_cmd = [str(own) if x == str(table) else x for x in cmd]
                slots.append(Slot(label, only, set(part), k, work=work, cmd=[*slot_cmd, "--only", str(only)]))
            print(f"A = clips 0..{a_end - 1}, B = clips {b_start}..{n - 1} ({a_end - b_start} in both, first in "
                  f"both tables)", flush=True)
            soak_concurrent(job, slots)
        res = compare(ref, soak, names, mode)
        res.wall = time.perf_counter() - t0
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=MODES, default="default", help="which soak (default: default)")
    ap.add_argument("--all-modes", action="store_true", help="run every mode, at the smaller ALL_MODES_SIZES")
    ap.add_argument("--n", type=int, default=None, help="clips (default 2000; see ALONE_SIZES / ALL_MODES_SIZES)")
    ap.add_argument("--kills", type=int, default=None, help="SIGKILLs before the finishing run (default 20)")
    ap.add_argument("--seconds", type=float, default=0.5, help="seconds of audio per clip (default mode)")
    ap.add_argument("--min-seconds", type=float, default=0.3, help="shortest variable-length clip (other modes)")
    ap.add_argument("--max-seconds", type=float, default=2.0, help="longest variable-length clip (other modes)")
    ap.add_argument("--level", choices=("utt", "frame"), default=None,
                    help="level of the non-default modes (default: frame for varlen and force, utt otherwise)")
    ap.add_argument("--flush-rows", type=int, default=32, help="clips per committed segment (mer extract --flush-rows)")
    ap.add_argument("--batch", type=int, default=8, help="clips per forward pass")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--early", type=float, default=0.25, help="share of kills aimed at start-up (default 0.25)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here instead of a temporary one")
    args = ap.parse_args()

    modes = list(MODES) if args.all_modes else [args.mode]
    sizes = ALL_MODES_SIZES if args.all_modes else ALONE_SIZES
    work = Path(tempfile.mkdtemp(prefix="mer-soak-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    t_all = time.perf_counter()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` kills the runs (own sessions)
    try:
        bench = Bench(args, work)
        for mode in modes:
            n = args.n if args.n is not None else sizes[mode][0]
            kills = args.kills if args.kills is not None else sizes[mode][1]
            if len(modes) > 1 or mode != "default":
                print(f"\n== mode {mode}: {n} clips, {kills} kills "
                      f"(python benchmarks/soak_resume.py --mode {mode} --n {n} --kills {kills} --seed {args.seed})",
                      flush=True)
            results.append(bench.run_mode(mode, n, kills))
    finally:
        cleanup()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if modes == ["default"]:
        r = results[0]
        print(f"soak_unknown_clips: {r.unknown}")
        print(f"soak_duplicated_clips: {r.duplicated}")
        print(f"soak_max_abs_diff: {r.diff:.3g}")
        print(f"soak_lost_clips: {r.lost}")
        return
    print(f"\nall modes: {time.perf_counter() - t_all:.1f} s")
    for r in results:
        print(f"mode {r.mode}: {r.wall:.1f} s" + (f" ({'; '.join(r.notes)})" if r.notes else ""))
    for r in results:
        print(f"soak_{r.mode}_unknown_clips: {r.unknown}")
        print(f"soak_{r.mode}_duplicated_clips: {r.duplicated}")
        print(f"soak_{r.mode}_max_abs_diff: {r.diff:.3g}")
        print(f"soak_{r.mode}_lost_clips: {r.lost}")
    print(f"soak_unknown_clips: {sum(r.unknown for r in results)}")
    print(f"soak_duplicated_clips: {sum(r.duplicated for r in results)}")
    print(f"soak_max_abs_diff: {max(r.diff for r in results):.3g}")
    print(f"soak_lost_clips: {sum(r.lost for r in results)}")


if __name__ == "__main__":
    main()
