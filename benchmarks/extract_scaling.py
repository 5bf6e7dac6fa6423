"""Does extraction scale? Peak memory over 1k vs 10k clips, and 1 vs 2 dask workers.

(a) Memory: ``mer extract audio --level frame`` over 1,000 and over 10,000 tiny synthetic clips
    (0.5 s, 16 kHz mono WAV written with the ``wave`` module), each run in its own child process,
    whose peak RSS comes from ``os.wait4`` (that child's own ``ru_maxrss``, not the maximum over all
    children). The extractor is a small random HuBERT (``hf-speech``, 2 layers, hidden 256, conv hop
    80 samples: 99 frames of 256 values per clip, ``-O layers=last2``) saved to a temporary folder,
    run with ``OMP_NUM_THREADS=1``. Frame-level output makes the check sensitive: 10,000 clips are
    about 1 GB of float32 features (half that as stored float16), so a stage that kept every clip's
    features (or its write buffers) in memory would push the 10k peak well past 1.2 x the 1k peak;
    the script prints that size next to the figure. About 0.5 GB of each peak is importing torch.
    Goal: the 10k peak is at most 1.2 x the 1k peak (memory bounded by prefetch and segment size,
    not by the number of clips).
(b) Dask: the same job (utterance level) through ``run_stage(spec, workers=1)`` and ``workers=2``
    (a local dask.distributed cluster of worker processes); rates are the stage's own, so they
    include starting the cluster and loading the model in each worker. The fair pair uses the same
    two threads either way: 1 worker with 2 threads against 2 workers with 1 thread each
    (``dask_speedup_2w``). The default model is the bundled Whisper-base encoder (CTranslate2), whose
    threads are set explicitly (``intra_threads`` = 2 / workers), and a third run, 1 worker pinned
    to 1 thread (the figure this script reported before), gives ``dask_speedup_2w_vs_pinned``, the
    parallel efficiency of the distributed path itself. ``--dask-model hubert`` runs a random
    HuBERT-base-sized torch model instead; the stage gives each worker ``cpu_count // workers``
    torch threads (dask's nanny starts workers with ``OMP_NUM_THREADS=1``; ``run_block`` then calls
    ``torch.set_num_threads``), so on 2 cores that is the same pair, and there is no pinned run.
    Each run also reports how many cores its processes kept busy on average (CPU time of the client
    and of the reaped worker processes over the wall time), so a reader sees the threads were real.
    Goal on 2 cores: >= 1.7.

Figure lines, in order: ``rss_ratio_10k_1k: R``, ``dask_speedup_2w_vs_pinned: P`` (Whisper only), and
last ``dask_speedup_2w: S``.

    python benchmarks/extract_scaling.py                          # ~5 min on 2 idle cores
    python benchmarks/extract_scaling.py --small 200 --large 2000 --dask-n 16   # quick check
    python benchmarks/extract_scaling.py --dask-model hubert --dask-n 240
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

SR = 16000
FRAME_DIM = 256  # hidden size of the memory runs' model (frame-level output)


def write_clips(folder: Path, n: int, seconds: float = 0.5) -> list[str]:
    """``n`` distinct mono 16-bit WAV files (a tone plus noise), named ``c000000``..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    names = []
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + i % 400) * t) + 0.05 * rng.standard_normal(len(t))
        write_wav(folder / f"c{i:06d}.wav", x, SR)
        names.append(f"c{i:06d}")
    return names


def write_wav(path: Path, x: np.ndarray, rate: int) -> None:
    """``x`` (floats in [-1, 1]) as a mono 16-bit WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def write_table(path: Path, names: list[str]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "audio"])
        for name in names:
            w.writerow([name, f"clips/{name}.wav"])
    return path


def make_hubert(folder: Path, size: str) -> Path:
    """A random HuBERT saved with save_pretrained.

    ``frame``: 2 layers, hidden 256, conv hop 80 samples (99 frames per 0.5 s clip), for the memory
    runs; ``base``: the ``HubertConfig()`` sizes (layer-norm variant), for the dask runs."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    if size == "base":
        cfg = HubertConfig(feat_extract_norm="layer", do_stable_layer_norm=True)
    else:
        cfg = HubertConfig(hidden_size=FRAME_DIM, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                           conv_dim=(16, 16, 16), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4),
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16,
                           feat_extract_norm="layer", do_stable_layer_norm=True)
    out = folder / f"hubert-{size}-random"
    HubertModel(cfg).save_pretrained(out)
    return out


def peak_rss_run(cmd: list[str], log_path: Path, env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` as a child; (its own peak RSS in MiB, wall seconds). A failing run stops the benchmark."""
    t0 = time.perf_counter()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
    return usage.ru_maxrss / 1024.0, wall  # Linux: KiB


def memory_part(root: Path, model: Path, small: int, large: int, batch: int) -> float:
    from mer.store import FeatureStore

    clips_dir = root / "clips"
    t0 = time.perf_counter()
    names = write_clips(clips_dir, large)
    print(f"(a) wrote {large} clips of 0.5 s in {time.perf_counter() - t0:.1f} s")
    # One torch thread: the small model's ops run several times faster than with two threads
    # that compete with the decode threads; it changes the speed of the run, not what it holds.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peaks = {}
    for n in (small, large):
        table = write_table(root / f"clips_{n}.csv", names[:n])
        store = root / f"store_{n}.zarr"
        cmd = [sys.executable, "-m", "mer.pipeline.cli", "extract", "audio", str(table), "--store", str(store),
               "-e", "hf-speech", "-m", str(model), "-b", str(batch), "--level", "frame", "-O", "layers=last2"]
        peak, wall = peak_rss_run(cmd, root / f"extract_{n}.log", env)
        peaks[n] = peak
        fs = FeatureStore(store)[FeatureStore(store).sets()[0]]
        meta = fs.meta()
        if meta["n_rows"] != n:
            raise SystemExit(f"the {n}-clip run stored {meta['n_rows']} clips")
        f32 = meta["n_frames"] * fs.dim * 4 / 2**20
        print(f"(a) mer extract audio, {n:>6} clips: peak RSS {peak:7.1f} MiB, {wall:5.1f} s wall "
              f"({n / wall:.0f} clips/s including start-up); features {meta['n_frames']} frames x {fs.dim}: "
              f"{f32:.0f} MiB as float32, {f32 / 2:.0f} MiB as float16 ({fs.nbytes() / 2**20:.0f} MiB on disk)")
    grow = peaks[large] - peaks[small]
    print(f"(a) growth {small} -> {large} clips: {grow:+.1f} MiB "
          f"({grow * 1024 / (large - small) * 1000:+.0f} KiB per 1000 clips)")
    # what keeping every clip's features would cost: the (large - small) extra clips' vectors
    extra = f32 * (large - small) / large
    print(f"(a) sensitivity: keeping every clip's features would add ~{extra:.0f} MiB (float32; {extra / 2:.0f} as "
          f"float16) to the {large}-clip peak: ratio >= {(peaks[small] + extra) / peaks[small]:.2f} "
          f"({(peaks[small] + extra / 2) / peaks[small]:.2f} as float16) against the goal of 1.2")
    return peaks[large] / peaks[small]


SPIN = """
import sys, time
import numpy as np
a = np.random.default_rng(0).standard_normal((384, 384), dtype=np.float32)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < float(sys.argv[1]):
    a = np.tanh(a @ a)
    n += 1
print(n)
"""


def machine_ceiling(seconds: float = 8.0) -> float:
    """Throughput of two concurrent single-threaded compute processes over one alone (ideal 2.0).

    What two workers can gain at best on this machine right now: below 2 when the cores are shared
    with other work or are hyper-threads of one physical core.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def spin(k: int) -> int:
        procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)], env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(k)]
        return sum(int(p.communicate()[0]) for p in procs)

    one, two = spin(1), spin(2)
    return two / one


def busy_seconds() -> float:
    """CPU seconds of this process and of its reaped children (the dask worker processes) so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def dask_part(root: Path, args: argparse.Namespace) -> tuple[float, float | None]:
    """(fair speedup: 2 workers x 1 thread over 1 worker x 2 threads, speedup over 1 pinned thread or None)."""
    from mer.pipeline.stage import StageSpec, run_stage

    names = write_clips(root / "dask" / "clips", args.dask_n)
    table = write_table(root / "dask" / "clips.csv", names)
    cores = os.cpu_count() or 1
    # (label, workers, threads per worker); the stage's own sizing for torch is cpu_count // workers
    if args.dask_model == "whisper":
        extractor, base = "whisper-ct2", {"model": "whisper-base", "batch_size": args.dask_batch}
        runs = [("1 worker x 2 threads", 1, 2), ("2 workers x 1 thread", 2, 1), ("1 worker x 1 thread (pinned)", 1, 1)]
        what = f"Whisper-base (CTranslate2, intra_threads per worker as labelled), batch {args.dask_batch}"
    else:
        extractor = "hf-speech"
        base = {"model": str(make_hubert(root, "base")), "batch_size": args.dask_batch}
        runs = [(f"1 worker x {max(1, cores)} threads", 1, max(1, cores)),
                (f"2 workers x {max(1, cores // 2)} thread(s)", 2, max(1, cores // 2))]
        what = f"random HuBERT-base-sized (torch, cpu_count // workers threads per worker), batch {args.dask_batch}"
        if cores != 2:
            print(f"(b) note: {cores} CPU cores, so the stage's torch threads are {runs[0][2]} and 2 x {runs[1][2]}, "
                  "not 2 and 2 x 1")
    ceiling = machine_ceiling()
    rates: dict[str, list[float]] = {r[0]: [] for r in runs}
    secs: dict[str, list[float]] = {r[0]: [] for r in runs}
    busy: dict[str, list[float]] = {r[0]: [] for r in runs}
    for k in range(args.dask_repeats):
        for label, workers, threads in runs[k % len(runs):] + runs[: k % len(runs)]:  # order rotates by round
            config = {**base, "intra_threads": threads} if extractor == "whisper-ct2" else base
            store = root / "dask" / f"store_{workers}x{threads}.zarr"
            spec = StageSpec(modality="audio", clips=table, store=store, extractor=extractor, config=config)
            c0 = busy_seconds()
            report = run_stage(spec, force=True, workers=workers, progress=False)
            if report.failed or report.done != args.dask_n:
                raise SystemExit(f"dask run '{label}' failed: {dict(list(report.failed.items())[:3])}")
            rates[label].append(report.clips_per_s)
            secs[label].append(report.seconds)
            busy[label].append((busy_seconds() - c0) / report.seconds)
    print(f"(b) {args.dask_n} clips, {what}, {cores} CPU cores, load average {os.getloadavg()[0]:.2f}, "
          f"{args.dask_repeats} round(s)")
    print(f"(b) machine ceiling: two single-threaded numpy processes run {ceiling:.2f}x the work of one "
          f"(2.00 on two free cores)")
    for label, _, _ in runs:
        print(f"(b) {label:29s}: {statistics.median(rates[label]):.3f} clips/s ({statistics.median(secs[label]):.1f} s, "
              f"cluster start and model load included; ~{statistics.median(busy[label]):.2f} cores busy)   "
              f"rounds: {', '.join(f'{r:.3f}' for r in rates[label])}")
    rate = {label: statistics.median(v) for label, v in rates.items()}
    fair = rate[runs[1][0]] / rate[runs[0][0]]
    pinned = rate[runs[1][0]] / rate[runs[2][0]] if len(runs) > 2 else None
    return fair, pinned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=1000, help="clips of the small memory run")
    ap.add_argument("--large", type=int, default=10000, help="clips of the large memory run")
    ap.add_argument("--batch", type=int, default=16, help="batch size of the memory runs")
    ap.add_argument("--dask-model", choices=["whisper", "hubert"], default="whisper", help="model of the dask runs")
    ap.add_argument("--dask-n", type=int, default=32, help="clips of the dask runs")
    ap.add_argument("--dask-batch", type=int, default=4, help="batch size of the dask runs")
    ap.add_argument("--dask-repeats", type=int, default=1, help="rounds of the dask runs (their order rotates by round); medians are reported")
    ap.add_argument("--skip-memory", action="store_true", help="only the dask part")
    ap.add_argument("--skip-dask", action="store_true", help="only the memory part")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # cluster start/stop chatter, workers too
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass

    root = Path(tempfile.mkdtemp(prefix="mer-scaling-", dir=args.dir))
    try:
        ratio = None
        if not args.skip_memory:
            ratio = memory_part(root, make_hubert(root, "frame"), args.small, args.large, args.batch)
        speedup, pinned = (None, None) if args.skip_dask else dask_part(root, args)
        if ratio is not None:
            print(f"rss_ratio_10k_1k: {ratio:.3f}")
        if pinned is not None:
            print(f"dask_speedup_2w_vs_pinned: {pinned:.2f}")
        if speedup is not None:
            print(f"dask_speedup_2w: {speedup:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
