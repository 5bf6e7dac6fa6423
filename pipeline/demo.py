"""The end-to-end demo on the bundled RAVDESS sample (``mer demo`` / ``make demo``).

Steps: build the clip table and labels; fill a feature store through the same extraction stages
users run — real OpenFace action units (``table``), real pretrained Whisper-base speech features
(``whisper-ct2``) and MiniLM subtitle features (``sentence``); run the real video stage with face
crops (``mer extract video --faces``) on one bundled real clip with a small randomly initialised
CLIP (its vectors carry no emotion and the fusion does not use them); check the store and print its
summary; hide the labels of the last three speakers (the unlabelled pool), train the Audio-Guided
Transformer with 3 folds grouped by speaker on the rest, run one self-training round over the pool,
and predict the pool with label-shift correction, scored against the hidden labels.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import mer

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)


def default_data() -> Path:
    """The bundled sample: ``examples/ravdess`` next to the package sources."""
    return Path(mer.__file__).resolve().parent / "examples" / "ravdess"


def default_video() -> Path:
    """The bundled real clip of the video step: ``examples/video/fer_test.mp4`` (justinshenk/fer, MIT)."""
    return Path(mer.__file__).resolve().parent / "examples" / "video" / "fer_test.mp4"


VIDEO_KEY = "video/clip-random-faces"  # the demo's face-crop CLIP set (random weights)


def demo_stages(data: Path, clips_csv: Path, store: Path, whisper_seconds: float) -> list:
    """The three extraction stages of the demo, as :class:`StageSpec` objects."""
    from .inputs import DecodeSettings
    from .stage import StageSpec

    common = dict(clips=clips_csv, store=store)
    return [
        StageSpec(modality="video", extractor="table", key="video/openface-au", store_dtype="float32",
                  config={"model": str(data / "openface_au.csv")}, **common),
        StageSpec(modality="audio", extractor="whisper-ct2", key="audio/whisper-base",
                  config={"model": "whisper-base", "input_seconds": whisper_seconds, "batch_size": 4}, **common),
        StageSpec(modality="text", extractor="sentence", key="text/minilm",
                  config={"model": "all-MiniLM-L6-v2"}, decode=DecodeSettings(text_column="text"), **common),
    ]


def run_demo(out: Path, data: Path | None = None, whisper_seconds: float = 0.0) -> int:
    """Run the demo into ``out``; returns the process exit code (0 when every step succeeded)."""
    from rich.console import Console

    from mer.store import FeatureStore
    from mer.store.check import check_store
    from mer.store.tables import read_labels, write_clip_table

    from .cli_store import print_info
    from .clips import labels_from_table, scan_dataset
    from .report import print_report
    from .stage import run_stage

    console = Console()
    data = Path(data) if data else default_data()
    if not (data / "clips.csv").is_file():
        console.print(f"[red]demo data not found at {data}; pass --data to a RAVDESS-style folder[/]")
        return 1
    out.mkdir(parents=True, exist_ok=True)

    console.rule("1. clip table")
    table = scan_dataset(data)
    clips_csv = write_clip_table(table, out / "clips.csv")
    labels_csv = labels_from_table(table, "emotion", out / "labels.csv")
    labels = read_labels(labels_csv)
    speakers = sorted(set(table.column("speaker").values()), key=int)
    console.print(f"{len(table)} clips, {len(set(labels.values()))} emotions, {len(speakers)} speakers -> "
                  f"{clips_csv}, {labels_csv}")

    failed = 0
    for i, spec in enumerate(demo_stages(data, clips_csv, out / "features.zarr", whisper_seconds), start=2):
        console.rule(f"{i}. mer extract {spec.modality} --extractor {spec.extractor} -> {spec.key}")
        report = run_stage(spec)
        print_report(report)
        failed += len(report.failed)

    failed += run_video_step(console, out, out / "features.zarr")

    console.rule("6. store")
    store = FeatureStore(out / "features.zarr")
    problems = check_store(store)
    for p in problems:
        console.print(f"[red]{p}[/]")
    print_info(store.path)

    keys = [spec.key for spec in demo_stages(data, clips_csv, store.path, whisper_seconds)]
    audio_first = sorted(keys, key=lambda k: not k.startswith("audio/"))
    run_fusion(console, out, store.path, audio_first, labels, clips_csv, speakers)
    return 1 if (problems or failed) else 0


def build_random_clip(d: Path, seed: int = 0) -> Path:
    """Save a small randomly initialised Hugging Face ``CLIPModel`` into ``d`` (nothing downloaded):
    224 px input, 32 px patches, a 2-layer 64-wide vision tower, 64-d projection. A folder that
    already holds one is kept, so a rerun has the same weights hash and its stage resumes."""
    if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
        return d
    import shutil

    import torch
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=2),
        vision_config=dict(image_size=224, patch_size=32, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=128),
        projection_dim=64)
    with torch.random.fork_rng():  # the demo's later training draws from an untouched global generator
        torch.manual_seed(seed)
        model = CLIPModel(cfg)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


def run_video_step(console: Console, out: Path, store: Path, video: Path | None = None) -> int:
    """Step 5: ``mer extract video --extractor clip --faces`` (detector ``auto``, 2 frames/s) on the
    bundled real clip, with a small random CLIP (:func:`build_random_clip`); prints the detector and
    the frames with a face per clip. Returns the number of failed clips."""
    from mer.store import FeatureStore

    from .decode_video import VideoDecodeConfig
    from .inputs import DecodeSettings
    from .report import print_report
    from .stage import StageSpec, run_stage

    video = Path(video) if video else default_video()
    console.rule(f"5. mer extract video --extractor clip --faces -> {VIDEO_KEY} (random CLIP weights)")
    if not video.is_file():
        console.print(f"[yellow]demo video not found at {video}; video step skipped[/]")
        return 0
    table = out / "video-clips.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("name", "video"), (video.stem, str(video.resolve()))])
    model = build_random_clip(out / "models" / "clip-random")
    spec = StageSpec(modality="video", extractor="clip", key=VIDEO_KEY, clips=table, store=store,
                     config={"model": str(model)}, decode=DecodeSettings(video=VideoDecodeConfig(fps=2.0, faces=True)))
    report = run_stage(spec)
    print_report(report)
    fs = FeatureStore(store, mode="r")[VIDEO_KEY]
    names = fs.names()
    detector = fs.provenance.decode["video"]["face_detector"]
    console.print(f"face detector: {detector} (--face-detector auto)")
    for name, found, frames in zip(names, fs.read_extra("faces", names), fs.read_extra("frames", names)):
        console.print(f"{name}: faces found in {int(found)} of {int(frames)} frames (2 frames/s, {video.name})")
    console.print(f"The CLIP weights of {VIDEO_KEY} are random ({model}, built here, nothing downloaded): its "
                  "vectors carry no emotion and the fusion below does not use them; the RAVDESS OpenFace action "
                  "units (video/openface-au) stay the demo's trained visual modality. For real features: "
                  "mer extract video clips.csv --faces -m openai/clip-vit-large-patch14")
    return len(report.failed)


def run_fusion(console, out: Path, store: Path, keys: list[str], labels: dict[str, str], clips_csv: Path,
               speakers: list[str]) -> None:
    """Steps 7-9: the last three speakers' labels are hidden (they become the unlabelled pool); the AGT
    trains on the rest, one self-training round adds pool pseudo-labels, and the best round predicts
    the pool with label-shift correction, scored against the hidden labels."""
    from mer.fusion.config import TrainConfig
    from mer.fusion.eval import evaluate_predictions
    from mer.fusion.predict import predict_corrected, write_predictions
    from mer.fusion.run import train_run
    from mer.fusion.selftrain import SelfTrainConfig, run_selftrain
    from mer.store.tables import read_clip_table, write_labels

    speaker = read_clip_table(clips_csv).column("speaker")
    hidden = speakers[-3:]
    labelled = {n: c for n, c in labels.items() if speaker[n] not in hidden}
    pool = [n for n in labels if speaker[n] in hidden]
    labelled_csv = write_labels(labelled, out / "labels-labelled.csv")
    hidden_csv = write_labels({n: labels[n] for n in pool}, out / "labels-pool-hidden.csv")
    (out / "pool.csv").write_text("name\n" + "\n".join(pool) + "\n")

    console.rule(f"7. mer fuse train --model agt --folds 3 --group-col speaker ({len(labelled)} labelled clips, "
                 f"speakers {speakers[0]}-{speakers[-4]})")
    run = out / "runs" / "agt"
    metrics = train_run(store, keys, labelled_csv, run, model="agt", train=TrainConfig(epochs=40), folds=3,
                        clips_csv=clips_csv, group_col="speaker")
    print_metrics(console, metrics, run)

    console.rule(f"8. mer fuse selftrain --rounds 1 (pool: {len(pool)} clips of speakers {', '.join(hidden)}, "
                 "labels hidden)")
    st_dir = out / "runs" / "selftrain"
    summary = run_selftrain(run, store, pool, st_dir, SelfTrainConfig(rounds=1, threshold=0.8),
                            pool_labels={n: labels[n] for n in pool})
    for r in summary["rounds"]:
        added = sum(r["pseudo_per_class"].values())
        acc = f", pseudo-label accuracy {r['pseudo_accuracy']:.2f}" if r.get("pseudo_accuracy") is not None else ""
        sel = f", selection score {r['select_score']:.3f}" if r.get("select_score") is not None else ""
        console.print(f"round {r['round']}: {added:.0f} pseudo-labels per fold{acc}; out-of-fold WAF "
                      f"{r['oof_waf']:.3f}{sel}")
    by = "inner-split selection score, not the reported out-of-fold WAF" if summary.get("best_by") == "select_score" \
        else "out-of-fold WAF"
    console.print(f"best round: {summary['best_round']} (by the {by}; plot: {st_dir / 'selftrain.png'})")

    console.rule("9. mer fuse predict --run runs/selftrain --names pool.csv --prior-correction none | em")
    for method in ("none", "em"):
        got, fix = predict_corrected(st_dir, store, pool, method)
        pred, _ = write_predictions(out / f"pool-predictions-{method}.csv", got, fix.probs, fix.classes)
        rep = evaluate_predictions(pred, hidden_csv)
        console.print(f"pool, prior correction {method}: WAF {rep['waf']:.3f}, accuracy {rep['accuracy']:.3f} "
                      f"(against the hidden labels) -> {pred}")
    truth = [sum(labels[n] == c for n in pool) / len(pool) for c in fix.classes]
    l1 = sum(abs(a - b) for a, b in zip(fix.priors, truth))
    l1_train = sum(abs(a - b) for a, b in zip(fix.train_priors, truth))
    console.print(f"estimated pool priors: L1 {l1:.3f} from the hidden truth (training priors: {l1_train:.3f}). "
                  "RAVDESS is balanced, so this pool has no label shift and the correction can only add noise "
                  "(here, new speakers also shift the features); it is for test sets whose class mix differs.")


def print_metrics(console, metrics: dict, run_dir: Path) -> None:
    """Per-fold and mean metrics of a run, and where its plots are."""
    from rich.table import Table

    table = Table(title=f"{metrics['model']} on {', '.join(metrics['features'])} (speaker-independent folds)")
    for col in ("fold", "train", "val", "best epoch", "accuracy", "WAF"):
        table.add_column(col, justify="right")
    for f in metrics["folds"]:
        table.add_row(str(f["fold"]), str(f["n_train"]), str(f["n_val"]), str(f["best_epoch"]),
                      f"{f['accuracy']:.3f}", f"{f['waf']:.3f}")
    s = metrics["summary"]
    table.add_row("mean ± std", "", "", "", f"{s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}",
                  f"{s['waf']['mean']:.3f} ± {s['waf']['std']:.3f}")
    console.print(table)
    console.print(f"chance: {1 / len(metrics['oof']['per_class']):.3f}; plots: {run_dir / 'confusion.png'}, "
                  f"{run_dir / 'learning_curves.png'}")
