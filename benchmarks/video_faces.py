"""Video with face crops: what decoding + face detection costs per detector, and what the stage
end to end costs against the model alone.

(a) Decode + face crop alone: ``decode_video`` with ``VideoDecodeConfig(faces=True,
    face_detector=D)`` for each detector D (``mtcnn``: facenet-pytorch's MTCNN; ``haar``: OpenCV's
    cascade; ``none``: centre squares, i.e. decoding plus a resize) over the four real clips of
    ``shared/data/video``, at ``--fps`` frames per second and at every frame, in this thread.
    Frames/s and the frames where a face was kept. Each detector is warmed up first (model load
    untimed). One table.
(b) ``mer extract video --faces`` end to end against the model alone, side by side in one run, with
    a CLIP ViT-B/16-sized image tower (hidden 768, 12 layers, 12 heads, patch 16, 224 px, projection
    512; random weights: a Hugging Face ``CLIPModel`` with a tiny text tower and a
    ``CLIPImageProcessor``, saved with ``save_pretrained`` and loaded by the ``clip`` extractor from
    that folder; ``--clip-size l14``: ViT-L/14 sizes, for a GPU):

    - end to end: ``run_stage`` on the ``StageSpec`` that ``mer extract video --faces
      --face-detector auto --fps F`` builds (decode threads ahead of the model, face crops,
      forward, store writes); the stage's own rate (model loading excluded);
    - model only: ``extractor.extract`` over the same clips' face crops decoded beforehand, in the
      same batches.

    ``--n`` clips (the four real clips repeated under other names, interleaved), alternating the
    two ways over chunks of ``--chunk`` clips (their order rotates), so load from other work on a
    shared machine hits both alike. Last line ``video_faces_overlap: X`` = end to end / model only
    (clips/s).

The face detector always runs on the CPU (the decode threads), also with ``--device cuda``.

    python benchmarks/video_faces.py                    # 2-core CPU: 4 clips at 2 fps, ViT-B/16, ~14 min
    python benchmarks/video_faces.py --skip-decode --n 8
    python benchmarks/video_faces.py --device cuda --dtype bf16 --clip-size l14 --batch 8 --n 64 --chunk 16
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract_overlap import VIDEO, VIDEO_CLIPS, load_info, video_table  # noqa: E402

from mer.pipeline.decode_video import VideoDecodeConfig, decode_video  # noqa: E402
from mer.pipeline.face_detectors import get_detector, mtcnn_available, resolve_detector  # noqa: E402
from mer.pipeline.inputs import DecodeSettings, load_item  # noqa: E402
from mer.pipeline.stage import StageSpec, build_extractor, length_batches, run_stage  # noqa: E402
from mer.store.tables import read_clip_table  # noqa: E402

DETECTORS = ("mtcnn", "haar", "none")
DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}
SIZES = {  # image towers of the random CLIP (224 px input)
    "b16": dict(patch_size=16, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                num_attention_heads=12, projection=512),
    "l14": dict(patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                num_attention_heads=16, projection=768),
    "tiny": dict(patch_size=16, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=2, projection=64),
}


def make_clip(folder: Path, size: str = "b16") -> Path:
    """A ``CLIPModel`` with a ViT-B/16- (or L/14-, tiny-) sized image tower, random weights, and a
    ``CLIPImageProcessor``, saved to a folder the ``clip`` extractor loads (tiny text tower)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    vision = dict(SIZES[size])
    projection = vision.pop("projection")
    cfg = CLIPConfig(text_config=dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=16, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2),
                     vision_config=dict(image_size=224, **vision), projection_dim=projection)
    model = CLIPModel(cfg)
    out = folder / f"clip-vit-{size}-random"
    model.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(out)
    n = sum(p.numel() for p in model.vision_model.parameters()) + model.visual_projection.weight.numel()
    print(f"model: random CLIP image tower ({size}: hidden {vision['hidden_size']}, {vision['num_hidden_layers']} "
          f"layers, {vision['num_attention_heads']} heads, patch {vision['patch_size']}, 224 px, projection "
          f"{projection}), {n / 1e6:.1f}M parameters, `clip` extractor (HF backend, local folder)")
    return out


def decode_table(fps: float) -> None:
    """(a): decode + face crop frames/s per detector, at ``fps`` and at every frame."""
    paths = [VIDEO / f"{c}.mp4" for c in VIDEO_CLIPS]
    detectors = [d for d in DETECTORS if d != "mtcnn" or mtcnn_available()]
    if "mtcnn" not in detectors:
        print("mtcnn skipped: facenet-pytorch is not installed")
    frame = decode_video("warm", paths[0], VideoDecodeConfig(num_frames=1)).frames
    for d in detectors:
        get_detector(d).detect(frame)  # load the model (this thread's) before timing
    rows = []
    for label, rate in ((f"{fps:g} fps", fps), ("every frame", None)):
        for d in detectors:
            cfg = VideoDecodeConfig(fps=rate, faces=True, face_detector=d)
            t0, c0 = time.perf_counter(), time.process_time()
            clips = [decode_video(p.stem, p, cfg) for p in paths]
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            n = sum(len(c.frames) for c in clips)
            found = sum(int(c.faces or 0) for c in clips)
            per_clip = ", ".join(f"{c.faces}/{len(c.frames)}" for c in clips)
            rows.append((label, d, n, found, per_clip, n / wall, wall, cpu / wall))
            print(f"  decode {label:>11} {d:>5}: {n} frames in {wall:.1f} s", flush=True)
    print(f"\n(a) decode + face crop alone (decode_video, one thread; torch threads {torch_threads()}), "
          f"4 real clips: {', '.join(VIDEO_CLIPS)}")
    print("| frames | detector | frames decoded | with a face (per clip) | frames/s | seconds | cores busy |")
    print("|---|---|---|---|---|---|---|")
    for label, d, n, found, per_clip, fr, wall, busy in rows:
        print(f"| {label} | {d} | {n} | {found} ({per_clip}) | {fr:.1f} | {wall:.1f} | {busy:.2f} |")


def stage_vs_model(args: argparse.Namespace, root: Path) -> None:
    """(b): the stage end to end vs the model alone on pre-decoded face crops."""
    clips, source = video_table(root, args.n)
    model_dir = make_clip(root, args.clip_size)
    dtype = DTYPES[args.dtype]
    # what `mer extract video CLIPS --store S -e clip -m DIR --faces --fps F --batch-size B` builds
    spec = StageSpec(modality="video", clips=clips, store=root / "features.zarr", extractor="clip",
                     config={"model": str(model_dir), "level": "utt", "device": args.device, "dtype": dtype,
                             "batch_size": args.batch},
                     decode=DecodeSettings(video=VideoDecodeConfig(fps=args.fps, faces=True, face_detector="auto")))
    table = read_clip_table(clips)
    names = table.names
    c0 = time.process_time()
    extractor = build_extractor(spec)
    load_cpu = time.process_time() - c0  # each run_stage call loads its own model; subtracted below
    decoded = {}
    for name in names:  # each source decoded once; its copies share the crops
        if source[name] not in decoded:
            decoded[source[name]] = load_item("video", table, name, spec.decode)
    items = {n: dataclasses.replace(decoded[source[n]], name=n) for n in names}
    frames = {n: len(items[n].frames) for n in names}
    print(f"face detector: {resolve_detector('auto')} (auto); sources at {args.fps:g} fps: "
          + ", ".join(f"{s} {len(c.frames)} frames ({c.faces} with a face)" for s, c in decoded.items()))
    extractor.extract([items[names[0]]])  # warm-up, untimed

    wall = {"stage": 0.0, "model": 0.0}
    cpu = dict.fromkeys(wall, 0.0)
    count = dict.fromkeys(wall, 0)
    nframes = dict.fromkeys(wall, 0)
    chunks = [names[i:i + args.chunk] for i in range(0, len(names), args.chunk)]

    def stage(part: list[str]) -> float:
        c0 = time.process_time()
        report = run_stage(spec, only=part, force=True, progress=False)
        if report.failed or report.done != len(part):
            raise SystemExit(f"stage failed on {len(report.failed)} clips: {dict(list(report.failed.items())[:3])}")
        add("stage", part, report.seconds, time.process_time() - c0 - load_cpu)
        return report.seconds

    def model(part: list[str]) -> float:
        c0, t0 = time.process_time(), time.perf_counter()
        for batch in length_batches([items[x] for x in part], args.batch, sort=False):
            extractor.extract(batch)
        seconds = time.perf_counter() - t0
        add("model", part, seconds, time.process_time() - c0)
        return seconds

    def add(way: str, part: list[str], seconds: float, cpu_s: float) -> None:
        wall[way] += seconds
        cpu[way] += cpu_s
        count[way] += len(part)
        nframes[way] += sum(frames[x] for x in part)

    for k, part in enumerate(chunks):
        ways = [("stage", stage), ("model", model)]
        got = {w: f(part) for w, f in (ways if k % 2 == 0 else ways[::-1])}
        print(f"chunk {k + 1}/{len(chunks)}: {len(part)} clips, {sum(frames[x] for x in part)} frames; seconds: "
              f"end to end {got['stage']:.1f}, model only {got['model']:.1f}", flush=True)

    r = {w: count[w] / wall[w] for w in wall}
    print(f"\n(b) {len(names)} clips ({len(VIDEO_CLIPS)} real clips repeated, {sum(frames.values()) / len(names):.1f} "
          f"frames each on average at {args.fps:g} fps, 224x224 face crops), batch {args.batch} clip(s), device "
          f"{args.device}, dtype {dtype}, torch threads {torch_threads()}, {load_info()}")
    print("| | clips/s | frames/s | seconds | cores busy |")
    print("|---|---|---|---|---|")
    for w, label in (("stage", "`mer extract video --faces` end to end (run_stage)"),
                     ("model", "model only (pre-decoded face crops, same batches)")):
        print(f"| {label} | {r[w]:.3f} | {nframes[w] / wall[w]:.2f} | {wall[w]:.1f} | {cpu[w] / wall[w]:.2f} |")
    print(f"video_faces_overlap: {r['stage'] / r['model']:.3f}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fps", type=float, default=2.0, help="frames sampled per second (the every-frame row of (a) "
                    "is always added)")
    ap.add_argument("--n", type=int, default=4, help="(b): clips, the four real ones repeated")
    ap.add_argument("--chunk", type=int, default=2, help="(b): clips per alternation of the two ways")
    ap.add_argument("--batch", type=int, default=1, help="(b): clips per forward pass (up to 16x as many frames)")
    ap.add_argument("--device", default="cpu", help="(b): extractor device: cpu, cuda, cuda:1 ...")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="(b): compute dtype (bf16 on cuda)")
    ap.add_argument("--clip-size", choices=sorted(SIZES), default="b16",
                    help="(b): ViT-B/16-sized tower (default), ViT-L/14-sized (GPU), or tiny (smoke runs)")
    ap.add_argument("--skip-decode", action="store_true", help="skip (a)")
    ap.add_argument("--skip-stage", action="store_true", help="skip (b)")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    missing = [c for c in VIDEO_CLIPS if not (VIDEO / f"{c}.mp4").is_file()]
    if missing:
        raise SystemExit(f"needs the four real clips of {VIDEO} (see its README.md); missing: {', '.join(missing)}")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {load_info()} at the start")
    if not args.skip_decode:
        decode_table(args.fps)
    if not args.skip_stage:
        root = Path(tempfile.mkdtemp(prefix="mer-video-faces-", dir=args.dir))
        try:
            stage_vs_model(args, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{load_info()} at the end")


if __name__ == "__main__":
    main()
