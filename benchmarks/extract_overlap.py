"""Does decoding overlap the model? End-to-end stage rate vs model-only rate (audio, text, video).

Audio / text: one model over the same clips, three ways, in one run:

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
(end-to-end / model-only; goal >= 0.85). On audio, decoding is ~2 ms against ~500 ms of model
time per clip, so even a serial stage would score ~0.99 there: the audio figure cannot fail. On a
CPU-only machine where the model already uses every core, decoding takes CPU time from the model,
so X is bounded by about model / (model + decode) time per clip; the script prints that bound. On
CPU, batching also buys little (the per-clip matrices are already large, and a batch pads every
clip to its longest), so Y stays near 1 there; the 3x goal presumes a device that batch 1 leaves
underused (a GPU: ``--device cuda``).

Video (``--video`` or ``--model clip-video``): the decode-heavy case. The four real clips of
``shared/data/video`` (596x336 to 320x240 H.264, 4.6-18.2 s), repeated under other names
(symlinks, ``--n`` clips in all, 16 by default, the four sources interleaved so every chunk of
four holds the same mix),
decoded at ``--fps`` frames per second (``--fps 0`` or ``--all-frames``: every frame) with face
crops (``VideoDecodeConfig(faces=True)``: OpenCV Haar cascade, 224x224 crops), through the
registered ``clip`` extractor with a CLIP ViT-B/16-sized image tower (hidden 768, 12 layers, 12
heads, patch 16, 224 px, projection 512; random weights, a full ``CLIPModel`` with a tiny text
tower plus a ``CLIPImageProcessor``, saved with ``save_pretrained``; ``--clip-size b32``: 32 px
patches). Four ways, alternating chunk by chunk (``--chunk`` clips, 4 by default; their order
rotates):

(a) the stage end to end (``run_stage``, decode threads ahead of the model, default prefetch);
(b) the model only, ``extractor.extract`` over the same batches of pre-decoded face crops;
(c) decode + face crop alone: ``load_item`` over the chunk's clips in one thread (frames/s);
(d) the serial stage: ``run_stage`` with ``prefetch=0`` (each clip decoded in the stage's thread
    just before the model needs it, no decode thread).

Lines, last three: ``decode_vs_model`` (time of (c) / time of (b); the figure can fail only when
decode + crop is at least a third of the model time, and the line says whether that holds),
``serial_vs_model`` ((d) / (b) in clips/s: what a stage without overlap scores), and last
``extract_overlap`` ((a) / (b) in clips/s; goal >= 0.85).

    python benchmarks/extract_overlap.py                        # 120 RAVDESS clips, batch 8, ~2.5 min on 2 idle cores
    python benchmarks/extract_overlap.py --n 360 --loop-n 120   # all bundled clips, ~8 min
    python benchmarks/extract_overlap.py --model whisper --batch 4
    python benchmarks/extract_overlap.py --synthetic --n 200    # synthetic 3 s AAC clips (44.1 kHz stereo)
    python benchmarks/extract_overlap.py --model minilm --n 1024 --batch 64 --loop-n 256   # subtitles
    python benchmarks/extract_overlap.py --video                # 16 real clips (4 x 4), 2 fps, face crops, ViT-B/16, ~12 min
    python benchmarks/extract_overlap.py --video --clip-size b32        # ViT-B/32-sized tower, ~4 min
    python benchmarks/extract_overlap.py --video --clip-size b32 --fps 0 --n 4   # every frame, ~10 min
    python benchmarks/extract_overlap.py --video --device cuda --batch 8 --n 64
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mer.pipeline.decode_video import VideoDecodeConfig
from mer.pipeline.inputs import DecodeSettings, load_item
from mer.pipeline.stage import StageSpec, build_extractor, length_batches, run_stage
from mer.store.tables import read_clip_table

ROOT = Path(__file__).resolve().parents[1]
RAVDESS = ROOT / "examples" / "ravdess" / "clips.csv"
MER_SUBTITLES = ROOT / "examples" / "mer2023" / "transcription.csv"
VIDEO = ROOT.parent / "shared" / "data" / "video"  # four real H.264 clips (see its README.md)
VIDEO_CLIPS = ("fer_test", "vf_GGSY1Qvo990", "fer_woman2", "vf_ZNVhz7ctTq0")  # shortest first: a short pipeline fill


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


def make_clip(folder: Path, size: str = "b16") -> Path:
    """A CLIPModel with a ViT-B/16-sized image tower (random weights) and a CLIPImageProcessor.

    ``size="b32"``: the same tower with 32 px patches (ViT-B/32, about 4x fewer FLOPs per frame);
    ``size="tiny"``: a 2-layer, 64-wide tower with the same 224 px input and patch 16, for smoke runs.
    The text tower is tiny either way (the ``clip`` extractor only runs the image tower).
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    vision = dict(image_size=224, patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12)
    if size == "b32":
        vision.update(patch_size=32)
    elif size == "tiny":
        vision.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=16, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2),
                     vision_config=vision, projection_dim=64 if size == "tiny" else 512)
    model = CLIPModel(cfg)
    out = folder / f"clip-vit-{size}-random"
    model.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)
    n = sum(p.numel() for p in model.vision_model.parameters()) + sum(p.numel() for p in model.visual_projection.parameters())
    what = "2 layers, hidden 64" if size == "tiny" else f"ViT-B/{vision['patch_size']} sizes: hidden 768, 12 layers, 12 heads"
    print(f"model: random CLIP image tower ({what}, patch {vision['patch_size']}, 224 px, projection "
          f"{cfg.projection_dim}), {n / 1e6:.1f}M parameters, `clip` extractor")
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


def video_table(folder: Path, n: int) -> tuple[Path, dict[str, str]]:
    """``n`` clips: symlinks to the four real clips under other names, the four interleaved.

    Returns the clip table and each clip's source (the file stem it links to)."""
    missing = [c for c in VIDEO_CLIPS if not (VIDEO / f"{c}.mp4").is_file()]
    if missing:
        raise SystemExit(f"the video case needs the four real clips of {VIDEO} (see its README.md); "
                         f"missing: {', '.join(f'{c}.mp4' for c in missing)}")
    clips = folder / "clips"
    clips.mkdir()
    source = {}
    table = folder / "clips.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "video"])
        for i in range(n):
            src = VIDEO_CLIPS[i % len(VIDEO_CLIPS)]
            name = f"v{i // len(VIDEO_CLIPS):03d}_{src}"
            (clips / f"{name}.mp4").symlink_to(VIDEO / f"{src}.mp4")
            w.writerow([name, f"clips/{name}.mp4"])
            source[name] = src
    return table, source


def stage_spec(args: argparse.Namespace, clips: Path, store: Path, model_dir: Path | None) -> StageSpec:
    if args.model == "minilm":
        return StageSpec(modality="text", clips=clips, store=store, extractor="sentence",
                         config={"model": "all-MiniLM-L6-v2", "batch_size": args.batch, "device": args.device,
                                 "empty": "encode"},
                         decode=DecodeSettings(text_column="english"), decode_threads=args.decode_threads,
                         prefetch=args.prefetch, length_groups=args.length_groups)
    if args.model == "clip-video":
        video = VideoDecodeConfig(fps=args.fps or None, faces=True)
        return StageSpec(modality="video", clips=clips, store=store, extractor="clip",
                         config={"model": str(model_dir), "batch_size": args.batch, "device": args.device,
                                 "dtype": args.dtype},
                         decode=DecodeSettings(video=video), decode_threads=args.decode_threads,
                         prefetch=args.prefetch, length_groups=args.length_groups)
    if args.model == "whisper":
        extractor, config = "whisper-ct2", {"model": "whisper-base", "batch_size": args.batch, "device": args.device}
    else:
        extractor, config = "hf-speech", {"model": str(model_dir), "batch_size": args.batch, "device": args.device}
    return StageSpec(modality="audio", clips=clips, store=store, extractor=extractor, config=config,
                     decode_threads=args.decode_threads, prefetch=args.prefetch, length_groups=args.length_groups)


def load_info() -> str:
    return f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}"


def audio_text_case(args: argparse.Namespace, root: Path) -> None:
    """(a) stage, (b) model only, (c) per-clip loop, over RAVDESS audio, synthetic audio or subtitles."""
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
          f"{spec.ahead(args.batch)}, length groups of {groups} batches, device {args.device}, {load_info()}, "
          f"{len(chunks)} alternating chunks of {chunk}")
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


def video_case(args: argparse.Namespace, root: Path) -> None:
    """(a) stage, (b) model only, (c) decode + face crop alone, (d) serial stage, over real video."""
    n = args.n or 16
    clips, source = video_table(root, n)
    spec = stage_spec(args, clips, root / "features.zarr", make_clip(root, args.clip_size))
    serial = dataclasses.replace(spec, prefetch=0, store=root / "features-serial.zarr")
    table = read_clip_table(clips)
    names = table.names
    fps = f"{args.fps:g} fps" if args.fps else "every frame"

    c0 = time.process_time()
    extractor = build_extractor(spec)
    load_cpu = time.process_time() - c0  # each run_stage call loads its own model; subtracted below
    # (b) runs on face crops decoded beforehand: each of the four sources once, shared by its copies
    decoded = {}
    for name in names:
        if source[name] not in decoded:
            decoded[source[name]] = load_item("video", table, name, spec.decode)
    items = {name: dataclasses.replace(decoded[source[name]], name=name) for name in names}
    frames = {name: len(items[name].frames) for name in names}
    print("sources: " + ", ".join(f"{s} {len(c.frames)} frames ({c.faces} with a face)" for s, c in decoded.items())
          + f" at {fps}")
    extractor.extract([items[names[0]]])  # warm-up, untimed

    chunk = args.chunk or len(VIDEO_CLIPS)
    chunks = [names[i:i + chunk] for i in range(0, n, chunk)]
    ways = ("stage", "model", "decode", "serial")
    wall = dict.fromkeys(ways, 0.0)
    cpu = dict.fromkeys(ways, 0.0)
    count = dict.fromkeys(ways, 0)
    nframes = dict.fromkeys(ways, 0)
    per_chunk: list[dict[str, float]] = []

    def add(way: str, part: list[str], seconds: float, cpu_s: float) -> None:
        wall[way] += seconds
        cpu[way] += cpu_s
        count[way] += len(part)
        nframes[way] += sum(frames[x] for x in part)
        per_chunk[-1][way] = seconds

    def stage(part: list[str], s: StageSpec, way: str) -> None:
        c0 = time.process_time()
        report = run_stage(s, only=part, force=True, progress=False)
        if report.failed or report.done != len(part):
            raise SystemExit(f"stage failed on {len(report.failed)} clips: {dict(list(report.failed.items())[:3])}")
        add(way, part, report.seconds, time.process_time() - c0 - load_cpu)

    def model(part: list[str]) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        for batch in length_batches([items[x] for x in part], args.batch, sort=spec.groups() > 1):
            extractor.extract(batch)
        add("model", part, time.perf_counter() - t0, time.process_time() - c0)

    def decode(part: list[str]) -> None:
        c0, t0 = time.process_time(), time.perf_counter()
        for name in part:
            clip = load_item("video", table, name, spec.decode)
            if len(clip.frames) != frames[name]:
                raise SystemExit(f"{name}: {len(clip.frames)} frames decoded, {frames[name]} before")
        add("decode", part, time.perf_counter() - t0, time.process_time() - c0)

    # The four ways alternate chunk by chunk (rotating their order), so a change in the load of a
    # shared machine hits all four alike; rates are clips / summed seconds.
    for k, part in enumerate(chunks):
        per_chunk.append({})
        steps: list[Callable[[], None]] = [lambda p=part: stage(p, spec, "stage"), lambda p=part: model(p),
                                           lambda p=part: decode(p), lambda p=part: stage(p, serial, "serial")]
        for step in steps[k % 4:] + steps[: k % 4]:
            step()
        c = per_chunk[-1]
        print(f"chunk {k + 1}/{len(chunks)}: {len(part)} clips, {sum(frames[x] for x in part)} frames; seconds: "
              f"stage {c['stage']:.1f}, model {c['model']:.1f}, decode {c['decode']:.1f}, serial {c['serial']:.1f}; "
              f"stage/model {c['model'] / c['stage']:.3f}", flush=True)

    def rate(way: str) -> str:
        return (f"{count[way] / wall[way]:.3f} clips/s, {nframes[way] / wall[way]:.1f} frames/s "
                f"({wall[way]:.1f} s, ~{cpu[way] / wall[way]:.2f} cores busy)")

    r = {w: count[w] / wall[w] for w in ways}
    t = {w: wall[w] / count[w] for w in ways}  # seconds per clip
    decode_vs_model = t["decode"] / t["model"]
    bound = t["model"] / (t["model"] + t["decode"])
    print(f"clips: {n} ({len(VIDEO_CLIPS)} real clips of {VIDEO} repeated, {sum(frames.values()) / n:.1f} frames "
          f"each on average at {fps}, face crops 224x224), batch {args.batch} clip(s) (up to {args.batch * 16} frames "
          f"per forward), {args.decode_threads} decode threads, prefetch {spec.ahead(args.batch)} clips, device "
          f"{args.device}, dtype {args.dtype}, torch threads {torch_threads()}, {load_info()}, {len(chunks)} "
          f"alternating chunks of {chunk}")
    print(f"(a) end to end run_stage: {rate('stage')}")
    print(f"(b) model only (pre-decoded face crops, the same batches): {rate('model')}")
    print(f"(c) decode + face crop alone (load_item, one thread): {rate('decode')}")
    print(f"(d) serial run_stage (prefetch=0, no decode thread): {rate('serial')}")
    ratios = [c["model"] / c["stage"] for c in per_chunk]
    print(f"per-chunk (a)/(b): median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(f"CPU-bound overlap ceiling model/(model+decode): {bound:.3f} (when the model already uses every core)")
    holds = "holds: the figure can fail" if decode_vs_model >= 1 / 3 else "does NOT hold: the figure cannot fail here"
    print(f"decode + crop is {decode_vs_model:.2f}x the model time (goal >= 0.33: {holds})")
    print(f"decode_vs_model: {decode_vs_model:.3f}")
    print(f"serial_vs_model: {r['serial'] / r['model']:.3f}")
    print(f"extract_overlap: {r['stage'] / r['model']:.3f}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hubert",
                    help="hubert (random HuBERT-base-sized, default), whisper (bundled Whisper-base CT2), minilm "
                         "(bundled MiniLM on the bundled MER2023 English subtitles), clip-video (the video case) "
                         "or a local HF speech folder")
    ap.add_argument("--video", action="store_true", help="the video case (same as --model clip-video)")
    ap.add_argument("--n", type=int, default=None, help="clips for (a) and (b) (default: 120; video: 16)")
    ap.add_argument("--loop-n", type=int, default=32, help="clips for the per-clip loop (c); its rate is per clip")
    ap.add_argument("--batch", type=int, default=None,
                    help="clips per forward pass in (a) and (b) (default: 8; video: 1, i.e. up to 16 frames)")
    ap.add_argument("--device", default="cpu", help="extractor device: cpu, cuda, cuda:1 ...")
    ap.add_argument("--dtype", default="float32", help="video: compute dtype of the CLIP tower (float16 on cuda)")
    ap.add_argument("--fps", type=float, default=2.0, help="video: frames sampled per second (0: every frame)")
    ap.add_argument("--all-frames", action="store_true", help="video: every frame (same as --fps 0)")
    ap.add_argument("--clip-size", choices=["b16", "b32", "tiny"], default="b16",
                    help="video: ViT-B/16-sized image tower (default), ViT-B/32-sized, or a tiny one (smoke runs)")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic 3 s clips instead of the bundled RAVDESS")
    ap.add_argument("--decode-threads", type=int, default=2, help="StageSpec.decode_threads")
    ap.add_argument("--prefetch", type=int, default=None,
                    help="StageSpec.prefetch (default: four batches or one length group; 0: serial)")
    ap.add_argument("--chunk", type=int, default=0,
                    help="clips per alternation of the ways (0: one length group of the stage; video: 4)")
    ap.add_argument("--length-groups", type=int, default=0,
                    help="StageSpec.length_groups: batches sorted by length together (0: the stage's default; 1: off)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    if args.video:
        args.model = "clip-video"
    if args.all_frames:
        args.fps = 0.0
    video = args.model == "clip-video"
    if args.batch is None:
        args.batch = 1 if video else 8
    if args.n is None and not video:
        args.n = 120
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with the figures
    except ImportError:
        pass
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    root = Path(tempfile.mkdtemp(prefix="mer-overlap-", dir=args.dir))
    try:
        (video_case if video else audio_text_case)(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
