"""Does decoding overlap the model? End-to-end stage rate vs model-only rate vs a per-clip loop.

One model over the same clips, three ways, in one run:

(a) end to end: ``run_stage`` (decode in a thread pool ahead of the model, batched forward,
    feature-store writes), ``progress=False``; the rate is the stage's own (model loading excluded);
(b) model only: every clip decoded first, then only ``extractor.extract`` timed over the same
    batches as (a) (each chunk sorted by length and cut into batches of the same size, as the
    stage groups clips by length);
(c) MERTools-style loop: per clip, decode it, forward it alone (batch 1), ``np.save`` one .npy.

A warm-up batch runs before any timing. The three alternate chunk by chunk (``--chunk`` clips:
one length group of the stage, ``StageSpec.groups()`` batches, by default; their order rotates), so a change in the load of a shared
machine hits all three alike; each ``run_stage`` call loads its own model, which its rate excludes.

The default model is a HuBERT-base-sized encoder (the ``transformers.HubertConfig()`` sizes, 95M
parameters) with random weights, saved to a temporary folder and loaded by the ``hf-speech``
extractor; it uses the layer-norm variant (``feat_extract_norm="layer"``,
``do_stable_layer_norm=True``) so clips of different lengths batch with an attention mask
(group-norm models run unequal clips one by one, so batching cannot help them). ``--model
whisper`` runs the bundled real Whisper-base (CTranslate2) instead; ``--model DIR`` any local
Hugging Face speech encoder.

Prints the three rates, the decode cost per clip and the ratios. Second-to-last line
``vs_per_clip_loop: Y`` (end-to-end / per-clip loop; goal >= 3); last line ``extract_overlap: X``
(end-to-end / model-only; goal >= 0.85). On a CPU-only machine where the model already uses every
core, decoding takes CPU time from the model, so X is bounded by about model / (model + decode)
time per clip; the script prints that bound. On CPU, batching also buys little (the per-clip
matrices are already large, and a batch pads every clip to its longest), so Y stays near 1 there;
the 3x goal presumes a device that batch 1 leaves underused (a GPU: ``--device cuda``).

    python benchmarks/extract_overlap.py                        # 120 RAVDESS clips, batch 8, ~2.5 min on 2 idle cores
    python benchmarks/extract_overlap.py --n 360 --loop-n 120   # all bundled clips, ~8 min
    python benchmarks/extract_overlap.py --model whisper --batch 4
    python benchmarks/extract_overlap.py --synthetic --n 200    # synthetic 3 s AAC clips (44.1 kHz stereo)
    python benchmarks/extract_overlap.py --model minilm --n 1024 --batch 64 --loop-n 256   # subtitles
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mer.pipeline.inputs import DecodeSettings, load_item
from mer.pipeline.stage import StageSpec, build_extractor, length_batches, run_stage
from mer.store.tables import read_clip_table

ROOT = Path(__file__).resolve().parents[1]
RAVDESS = ROOT / "examples" / "ravdess" / "clips.csv"
MER_SUBTITLES = ROOT / "examples" / "mer2023" / "transcription.csv"


def make_hubert(folder: Path) -> Path:
    """HuBERT-base sizes, layer-norm conv encoder, random weights, saved with save_pretrained."""
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(feat_extract_norm="layer", do_stable_layer_norm=True)
    model = HubertModel(cfg)
    out = folder / "hubert-base-layernorm-random"
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"model: random HuBERT-base-sized encoder, {n / 1e6:.1f}M parameters, layer-norm conv encoder")
    return out


def synthetic_table(folder: Path, n: int) -> Path:
    """``n`` copies of a 3 s 44.1 kHz stereo AAC clip (tests/media.py) and their clip table."""
    sys.path.insert(0, str(ROOT / "tests"))
    from media import write_av  # noqa: PLC0415 - the test suite's synthetic media writer

    clips = folder / "clips"
    clips.mkdir()
    src = write_av(folder / "src.m4a", video=False)
    table = folder / "clips.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "audio"])
        for i in range(n):
            shutil.copyfile(src, clips / f"syn_{i:05d}.m4a")
            w.writerow([f"syn_{i:05d}", f"clips/syn_{i:05d}.m4a"])
    return table


def stage_spec(args: argparse.Namespace, clips: Path, store: Path, model_dir: Path | None) -> StageSpec:
    if args.model == "minilm":
        return StageSpec(modality="text", clips=clips, store=store, extractor="sentence",
                         config={"model": "all-MiniLM-L6-v2", "batch_size": args.batch, "device": args.device,
                                 "empty": "encode"},
                         decode=DecodeSettings(text_column="english"), decode_threads=args.decode_threads,
                         prefetch=args.prefetch, length_groups=args.length_groups)
    if args.model == "whisper":
        extractor, config = "whisper-ct2", {"model": "whisper-base", "batch_size": args.batch, "device": args.device}
    else:
        extractor, config = "hf-speech", {"model": str(model_dir), "batch_size": args.batch, "device": args.device}
    return StageSpec(modality="audio", clips=clips, store=store, extractor=extractor, config=config,
                     decode_threads=args.decode_threads, prefetch=args.prefetch, length_groups=args.length_groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hubert",
                    help="hubert (random HuBERT-base-sized, default), whisper (bundled Whisper-base CT2), minilm "
                         "(bundled MiniLM on the bundled MER2023 English subtitles) or a local HF speech folder")
    ap.add_argument("--n", type=int, default=120, help="clips for (a) and (b)")
    ap.add_argument("--loop-n", type=int, default=32, help="clips for the per-clip loop (c); its rate is per clip")
    ap.add_argument("--batch", type=int, default=8, help="clips per forward pass in (a) and (b)")
    ap.add_argument("--device", default="cpu", help="extractor device: cpu, cuda, cuda:1 ...")
    ap.add_argument("--synthetic", action="store_true", help="synthetic 3 s clips instead of the bundled RAVDESS")
    ap.add_argument("--decode-threads", type=int, default=2, help="StageSpec.decode_threads")
    ap.add_argument("--prefetch", type=int, default=0, help="StageSpec.prefetch (0: four batches)")
    ap.add_argument("--chunk", type=int, default=0,
                    help="clips per alternation of (a), (b), (c) (0: one length group of the stage)")
    ap.add_argument("--length-groups", type=int, default=0,
                    help="StageSpec.length_groups: batches sorted by length together (0: the stage's default; 1: off)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with the figures
    except ImportError:
        pass

    root = Path(tempfile.mkdtemp(prefix="mer-overlap-", dir=args.dir))
    try:
        model_dir = None
        if args.model == "hubert":
            model_dir = make_hubert(root)
        elif args.model == "minilm":
            print("model: bundled all-MiniLM-L6-v2 (sentence), English MER2023 subtitles")
        elif args.model != "whisper":
            model_dir = Path(args.model)
        else:
            print("model: bundled Whisper-base encoder (CTranslate2, whisper-ct2)")
        clips = MER_SUBTITLES if args.model == "minilm" else synthetic_table(root, args.n) if args.synthetic else RAVDESS
        spec = stage_spec(args, clips, root / "features.zarr", model_dir)
        table = read_clip_table(clips)
        names = table.names[: args.n]
        n = len(names)

        c0 = time.process_time()
        extractor = build_extractor(spec)
        load_cpu = time.process_time() - c0  # each run_stage call loads its own model; subtracted below
        t0 = time.perf_counter()
        items = {name: load_item(spec.modality, table, name, spec.decode) for name in names}
        t_decode = time.perf_counter() - t0
        audio_s = sum(getattr(it, "seconds", 0.0) for it in items.values())
        extractor.extract([items[x] for x in names[: args.batch]])  # warm-up, untimed
        npy = root / "npy"
        npy.mkdir()

        # The three ways alternate chunk by chunk (rotating their order), so a change in the load
        # of a shared machine hits all three alike; rates are clips / summed seconds.
        groups = spec.groups()
        chunk = args.chunk or max(16, groups * args.batch)
        chunks = [names[i:i + chunk] for i in range(0, n, chunk)]
        loop_quota = [args.loop_n * (k + 1) // len(chunks) - args.loop_n * k // len(chunks) for k in range(len(chunks))]
        wall = {"stage": 0.0, "model": 0.0, "loop": 0.0}
        cpu = dict.fromkeys(wall, 0.0)
        count = dict.fromkeys(wall, 0)
        ratios = []

        def stage(part: list[str]) -> None:
            c0 = time.process_time()
            report = run_stage(spec, only=part, force=True, progress=False)
            if report.failed or report.done != len(part):
                raise SystemExit(f"stage failed on {len(report.failed)} clips: {dict(list(report.failed.items())[:3])}")
            wall["stage"] += report.seconds
            cpu["stage"] += time.process_time() - c0 - load_cpu
            count["stage"] += len(part)

        def model(part: list[str]) -> None:
            c0, t0 = time.process_time(), time.perf_counter()
            for batch in length_batches([items[x] for x in part], args.batch, sort=groups > 1):
                extractor.extract(batch)
            wall["model"] += time.perf_counter() - t0
            cpu["model"] += time.process_time() - c0
            count["model"] += len(part)

        def loop(part: list[str]) -> None:
            c0, t0 = time.process_time(), time.perf_counter()
            for name in part:
                clip = load_item(spec.modality, table, name, spec.decode)
                feats = extractor.extract([clip])[0]
                np.save(npy / f"{name}.npy", feats.values)
            wall["loop"] += time.perf_counter() - t0
            cpu["loop"] += time.process_time() - c0
            count["loop"] += len(part)

        for k, part in enumerate(chunks):
            before = (wall["stage"], wall["model"])
            steps = [lambda p=part: stage(p), lambda p=part: model(p), lambda p=part[: loop_quota[k]]: loop(p)]
            for step in steps[k % 3:] + steps[: k % 3]:
                step()
            ratios.append((wall["model"] - before[1]) / (wall["stage"] - before[0]))
            print(f"chunk {k + 1}/{len(chunks)}: {len(part)} clips, stage/model {ratios[-1]:.3f}", flush=True)
        r_stage = count["stage"] / wall["stage"]
        r_model = count["model"] / wall["model"]
        r_loop = count["loop"] / wall["loop"]

        decode_per_clip = t_decode / n
        model_per_clip = 1.0 / r_model
        bound = model_per_clip / (model_per_clip + decode_per_clip)
        size = (f"{sum(len(it.text) for it in items.values()) / n:.0f} characters" if spec.modality == "text"
                else f"{audio_s / n:.2f} s of audio")
        print(f"clips: {n} {'MER2023 subtitles' if args.model == 'minilm' else 'synthetic' if args.synthetic else 'RAVDESS'} "
              f"({size} each on average), batch {args.batch}, {args.decode_threads} decode threads, prefetch "
              f"{args.prefetch or max(4, groups) * args.batch}, length groups of {groups} batches, device {args.device}, {os.cpu_count()} CPU cores, load average "
              f"{os.getloadavg()[0]:.2f}, {len(chunks)} alternating chunks of {chunk}")
        print(f"decode alone: {decode_per_clip * 1000:.1f} ms per clip ({1 / decode_per_clip:.1f} clips/s, one thread)")
        print(f"(a) end to end run_stage: {r_stage:.3f} clips/s (~{cpu['stage'] / count['stage']:.2f} CPU s per clip, "
              f"model load subtracted)")
        print(f"(b) model only (pre-decoded, the same batches of {args.batch}): {r_model:.3f} clips/s "
              f"({cpu['model'] / count['model']:.2f} CPU s per clip)")
        print(f"(c) per-clip loop (decode, batch 1, np.save) over {count['loop']} clips: {r_loop:.3f} clips/s "
              f"({cpu['loop'] / count['loop']:.2f} CPU s per clip)")
        print(f"per-chunk (a)/(b): median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
        print(f"batching gain (b)/(c): {r_model / r_loop:.2f}x; CPU-bound overlap ceiling model/(model+decode): {bound:.3f}")
        print(f"vs_per_clip_loop: {r_stage / r_loop:.2f}")
        print(f"extract_overlap: {r_stage / r_model:.3f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
