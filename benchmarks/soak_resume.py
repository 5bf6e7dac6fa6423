"""Soak test of resume: SIGKILL ``mer extract`` at random moments, again and again, then finish.

``--n`` small synthetic clips (0.5 s, 16 kHz mono WAV, a tone plus noise, each distinct) go through
``mer extract audio`` with a tiny random HuBERT (``hf-speech``, 2 layers, hidden 32, saved to a
temporary folder and loaded by path; ``OMP_NUM_THREADS=1``), committing every ``--flush-rows``
clips. First one uninterrupted run makes the reference store and measures the command's start-up
time and extraction rate. Then the same command runs into a second store ``--kills`` times, each time killed with
SIGKILL: a quarter of the kills (``--early``) at U(0.1, 0.9) times the shortest start-up seen so
far (while Python, torch and the model load, or the previous run's write-ahead segments merge);
the others during extraction, once the run has committed about U(0, 2) times a
``1 / (kills left + 1)`` share of the clips still to do, plus U(0, 1) times the time of one
segment, so that kills fall anywhere in a flush cycle (mid-forward, mid-segment-write, mid-merge)
and spread over the whole job. A last run finishes the rest.

Then the check: every clip of the table present exactly once, no clip unknown to the table, no
failure recorded, nothing left pending, ``check_store`` clean, and the vectors equal to the
uninterrupted run's (max abs difference printed; resumed runs batch other clips together, which
can move a float16 value by one unit in the last place at most).

Prints one line per kill, then the figures; last line ``soak_lost_clips: N`` (goal 0).

    python benchmarks/soak_resume.py                      # 2,000 clips, 20 kills, ~3-4 min on 2 cores
    python benchmarks/soak_resume.py --n 500 --kills 5    # quick look
    python benchmarks/soak_resume.py --flush-rows 256     # the CLI's default commit size
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
from pathlib import Path

import numpy as np
from mer.store import FeatureStore
from mer.store.check import check_store

from extract_scaling import write_clips, write_table  # benchmarks/ is on sys.path when run as a script

KEY = "audio/soak"


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


def mer_command(table: Path, store: Path, model: Path, flush_rows: int, batch: int) -> list[str]:
    script = Path(sys.executable).parent / "mer"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "mer.pipeline.cli"]
    return [*prefix, "extract", "audio", str(table), "--store", str(store), "-e", "hf-speech", "-m", str(model),
            "-O", "layers=last2", "--set", KEY.split("/")[1], "--batch-size", str(batch),
            "--flush-rows", str(flush_rows)]


def done_count(store: Path) -> tuple[int, int]:
    """(clips durably done, pending segments) of the soak set, read from another process's view."""
    if not (store / "zarr.json").exists() or KEY not in FeatureStore(store):
        return 0, 0
    fs = FeatureStore(store)[KEY]
    pending = len(list(fs.pending_dir.glob("*.npz"))) if fs.pending_dir.is_dir() else 0
    return len(fs.done_names()), pending


def stage_seconds(stdout: str) -> float:
    """The stage's own extraction time from the report table of ``mer extract``."""
    flat = re.sub(r"[\s\u2500-\u257f]+", " ", stdout)
    m = re.search(r"clips done skipped failed seconds clips/s \d+ \d+ \d+ \d+ ([\d.]+) ", flat)
    if not m:
        raise SystemExit(f"cannot read the report of mer extract:\n{stdout[-2000:]}")
    return float(m.group(1))


def _wait(proc: subprocess.Popen, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``proc``; True when it exited by itself."""
    try:
        proc.wait(timeout=max(0.0, seconds))
        return True
    except subprocess.TimeoutExpired:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="clips (default 2000)")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs before the finishing run (default 20)")
    ap.add_argument("--seconds", type=float, default=0.5, help="seconds of audio per clip")
    ap.add_argument("--flush-rows", type=int, default=32, help="clips per committed segment (mer extract --flush-rows)")
    ap.add_argument("--batch", type=int, default=8, help="clips per forward pass")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--early", type=float, default=0.25, help="share of kills aimed at start-up (default 0.25)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here instead of a temporary one")
    args = ap.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    work = Path(tempfile.mkdtemp(prefix="mer-soak-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    try:
        t0 = time.perf_counter()
        names = write_clips(work / "clips", args.n, args.seconds)
        table = write_table(work / "clips.csv", names)
        model = make_hubert(work)
        print(f"{args.n} clips of {args.seconds} s and a tiny HuBERT in {time.perf_counter() - t0:.1f} s "
              f"({work})", flush=True)

        ref, soak = work / "ref.zarr", work / "soak.zarr"
        t0 = time.perf_counter()
        res = subprocess.run(mer_command(table, ref, model, args.flush_rows, args.batch), env=env,
                             capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise SystemExit(f"reference run failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        extract_s = stage_seconds(res.stdout)
        startup = max(0.5, wall - extract_s)
        rate = args.n / max(extract_s, 1e-3)
        print(f"uninterrupted run: {wall:.1f} s wall, start-up {startup:.1f} s, {rate:.0f} clips/s", flush=True)

        cmd = mer_command(table, soak, model, args.flush_rows, args.batch)
        landed = 0
        phases: dict[str, int] = {}
        startups = [startup]  # seconds from launch to extracting, as observed run by run
        t_soak = time.perf_counter()
        for k in range(args.kills):
            done, _ = done_count(soak)
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t_start = time.perf_counter()
            if rng.random() < args.early:  # while Python, torch and the model load, or segments merge
                phase, delay = "start-up", min(startups) * rng.uniform(0.1, 0.9)
                finished = _wait(proc, delay)
            else:  # a random moment of extraction, after about a U(0, 2) share of the clips left
                phase = "extraction"
                share = (args.n - done) / (args.kills - k + 1)
                target = done + max(1, int(rng.uniform(0, 2) * share))
                while proc.poll() is None and done_count(soak)[0] <= done:
                    time.sleep(0.02)
                startups.append(time.perf_counter() - t_start - args.flush_rows / rate)
                while proc.poll() is None and done_count(soak)[0] < target:
                    time.sleep(0.02)
                # then up to one more segment's worth of time, so kills fall anywhere in a flush cycle
                finished = _wait(proc, rng.uniform(0, args.flush_rows / rate))
            if not finished:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            now, pending = done_count(soak)
            landed += not finished
            phases[phase] = phases.get(phase, 0) + (not finished)
            print(f"kill {k + 1:2d}/{args.kills} ({phase:10s}) at {time.perf_counter() - t_start:5.2f} s: "
                  + ("the run had finished; " if finished else "")
                  + f"{now:5d} clips committed ({now - done:+4d}), {pending:2d} pending segments", flush=True)
            if finished:
                break
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"finishing run failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        print(f"finishing run: {time.perf_counter() - t0:.1f} s; soak total {time.perf_counter() - t_soak:.1f} s",
              flush=True)

        a, b = FeatureStore(ref)[KEY], FeatureStore(soak)[KEY]
        got = b.names()
        want = set(names)
        lost = sorted(want - set(got))
        duplicated = len(got) - len(set(got))
        unknown = sorted(set(got) - want)
        problems = check_store(FeatureStore(soak))
        common = sorted(want & set(got))
        x_ref, x_soak = a.read(common, dtype="float32"), b.read(common, dtype="float32")
        diff = float(np.abs(x_ref - x_soak).max()) if common else float("nan")
        exact = int((x_ref == x_soak).all(axis=1).sum())
        print(f"kills landed: {landed} of {args.kills} ({phases.get('start-up', 0)} during start-up, "
              f"{phases.get('extraction', 0)} during extraction)")
        print(f"clips in the table: {args.n}; in the store: {len(got)} ({len(set(got))} distinct)")
        print(f"failures recorded: {len(b.failures())}; pending segments left: "
              f"{len(list(b.pending_dir.glob('*.npz'))) if b.pending_dir.is_dir() else 0}; "
              f"check_store problems: {len(problems)}")
        for p in problems[:10]:
            print(f"  {p}")
        print(f"vectors equal to the uninterrupted run: {exact} of {len(common)} bit for bit")
        print(f"soak_unknown_clips: {len(unknown)}")
        print(f"soak_duplicated_clips: {duplicated}")
        print(f"soak_max_abs_diff: {diff:.3g}")
        print(f"soak_lost_clips: {len(lost)}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
