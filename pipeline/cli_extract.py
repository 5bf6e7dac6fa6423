"""``mer extract video|audio|text``: run one extraction stage over a clip table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mer.extractors import extractor_names

from .face_detectors import detector_choices

app = typer.Typer(no_args_is_help=True)

DEFAULTS = {"audio": "whisper-ct2", "text": "sentence", "video": "clip"}



def _one_of(choices: list[str]) -> Any:
    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


CLIPS = typer.Argument(..., help="Clip table CSV (name, video, audio, text, ...).")
STORE = typer.Option(..., "--store", "-s", help="Feature store directory.")
MODEL = typer.Option(None, "--model", "-m", help="Hub id, open_clip name, local folder, or a bundled alias "
                     "(whisper-base, all-MiniLM-L6-v2). Default: the extractor's.")
LEVEL = typer.Option("utt", "--level", callback=_one_of(["utt", "frame"]), help="utt (one vector per clip) or frame.")
BATCH = typer.Option(None, "--batch-size", "-b", help="Clips per forward pass (default: the extractor's).")
DEVICE = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1 ...")
DTYPE = typer.Option("float32", "--dtype", callback=_one_of(["float32", "float16", "bfloat16"]),
                     help="Compute dtype of the model: float32, float16, bfloat16.")
STORE_DTYPE = typer.Option("float16", "--store-dtype", callback=_one_of(["float16", "float32"]),
                           help="Dtype of the stored vectors: float16 or float32.")
SET = typer.Option(None, "--set", help="Feature set name (default: <extractor>-<model>-<level>).")
ONLY = typer.Option(None, "--only", help="Only these clips (CSV with a name column, or one name per line).")
FORCE = typer.Option(False, "--force", help="Redo selected clips; start the set anew if its provenance differs.")
LIMIT = typer.Option(None, "--limit", help="Only the first N selected clips.")
WORKERS = typer.Option(0, "--workers", help="Run on a local dask.distributed cluster of N worker processes "
                       "(with --device cuda: one GPU each, round robin).")
SCHEDULER = typer.Option(None, "--scheduler", help="Address of an existing dask.distributed scheduler "
                         "(tcp://HOST:PORT); its workers must see the clip table, media, model and store at the "
                         "same absolute paths as this machine.")
OPTION = typer.Option(None, "--option", "-O", help="Extractor option key=value (repeatable), e.g. -O layers=last4.")
FLUSH = typer.Option(256, "--flush-rows", min=1, help="Commit every N clips (or every 5 s): a killed run loses "
                     "at most that much work.")
PREFETCH = typer.Option(None, "--prefetch", min=0, help="Decoded clips in flight ahead of the model (default: four "
                        "batches, or one length group when that is more; 0: serial, no decode threads).")
DECODE_THREADS = typer.Option(2, "--decode-threads", min=1, help="Threads decoding media ahead of the model (per "
                              "process; with --workers, per worker).")


def _choice(modality: str) -> Any:
    names = extractor_names(modality)
    return typer.Option(DEFAULTS[modality], "--extractor", "-e", callback=_one_of(names),
                        help=f"Registered extractor: {', '.join(names)}.")


DEDICATED = {"model": "--model", "level": "--level", "device": "--device", "dtype": "--dtype",
             "batch_size": "--batch-size"}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_options(extractor: str, pairs: list[str] | None) -> dict[str, Any]:
    """``-O key=value`` pairs -> typed config fields (types from the config dataclass annotations)."""
    import dataclasses

    from mer.extractors import get_extractor

    fields = {f.name: f for f in dataclasses.fields(get_extractor(extractor).config_class)}
    settable = [k for k in fields if k not in DEDICATED]
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if key in DEDICATED:
            raise typer.BadParameter(f"{pair!r}: use {DEDICATED[key]} for {key}", param_hint="--option")
        if not sep or key not in fields:
            raise typer.BadParameter(f"{pair!r}: expected key=value with key in {', '.join(settable)}",
                                     param_hint="--option")
        out[key] = _typed(pair, raw.strip(), str(fields[key].type))
    return out


def _typed(pair: str, raw: str, annotation: str) -> Any:
    """Convert ``raw`` by the field's annotation (``int | None``, ``bool``, ``float``, ``str``)."""
    low = raw.lower()
    if "None" in annotation and low in ("none", "null", ""):
        return None
    try:
        if "bool" in annotation:
            if low not in TRUE + FALSE:
                raise ValueError(f"expected one of {', '.join(TRUE + FALSE)}")
            return low in TRUE
        if "int" in annotation:
            return int(raw)
        if "float" in annotation:
            return float(raw)
    except ValueError as exc:
        raise typer.BadParameter(f"{pair!r}: {exc}", param_hint="--option") from None
    return raw


def _run(modality: str, clips: Path, store: Path, extractor: str, model: str | None, level: str,
         batch_size: int | None, device: str, dtype: str, store_dtype: str, set_name: str | None,
         only: Path | None, force: bool, limit: int | None, workers: int, scheduler: str | None,
         options: list[str] | None, decode: Any, flush_rows: int = 256, prefetch: int | None = None,
         decode_threads: int = 2) -> None:
    from .report import print_report
    from .stage import StageSpec, run_stage

    config = _parse_options(extractor, options)
    config.update(level=level, device=device, dtype=dtype)
    if model:
        config["model"] = model
    if batch_size:
        config["batch_size"] = batch_size
    spec = StageSpec(modality=modality, clips=clips, store=store, extractor=extractor, config=config,
                     key=set_name, store_dtype=store_dtype, decode=decode, flush_rows=flush_rows, prefetch=prefetch,
                     decode_threads=decode_threads)
    report = run_stage(spec, only=only, limit=limit, force=force, workers=workers, scheduler=scheduler)
    print_report(report)
    raise typer.Exit(1 if report.failed else 0)


@app.command()
def audio(
    clips: Path = CLIPS, store: Path = STORE, extractor: str = _choice("audio"), model: str = MODEL,
    level: str = LEVEL, batch_size: int = BATCH, device: str = DEVICE, dtype: str = DTYPE,
    store_dtype: str = STORE_DTYPE, set_name: str = SET, only: Path = ONLY, force: bool = FORCE,
    limit: int = LIMIT, workers: int = WORKERS, scheduler: str = SCHEDULER, option: list[str] = OPTION,
    flush_rows: int = FLUSH, prefetch: int = PREFETCH, decode_threads: int = DECODE_THREADS,
    sample_rate: int = typer.Option(16000, help="Decode to this rate (mono float32)."),
    max_seconds: float = typer.Option(None, help="Keep at most this many seconds of each clip."),
) -> None:
    """Speech features from the audio column (or the video's audio track)."""
    from .decode_audio import AudioDecodeConfig
    from .inputs import DecodeSettings

    decode = DecodeSettings(audio=AudioDecodeConfig(sample_rate=sample_rate, max_seconds=max_seconds))
    _run("audio", clips, store, extractor, model, level, batch_size, device, dtype, store_dtype, set_name, only,
         force, limit, workers, scheduler, option, decode, flush_rows, prefetch, decode_threads)


@app.command()
def video(
    clips: Path = CLIPS, store: Path = STORE, extractor: str = _choice("video"), model: str = MODEL,
    level: str = LEVEL, batch_size: int = BATCH, device: str = DEVICE, dtype: str = DTYPE,
    store_dtype: str = STORE_DTYPE, set_name: str = SET, only: Path = ONLY, force: bool = FORCE,
    limit: int = LIMIT, workers: int = WORKERS, scheduler: str = SCHEDULER, option: list[str] = OPTION,
    flush_rows: int = FLUSH, prefetch: int = PREFETCH, decode_threads: int = DECODE_THREADS,
    fps: float = typer.Option(2.0, help="Frames sampled per second."),
    num_frames: int = typer.Option(None, help="Instead of --fps: this many frames evenly spaced per clip."),
    size: int = typer.Option(None, help="Resize frames so the shorter side has this many pixels."),
    faces: bool = typer.Option(False, "--faces", help="Crop one tracked face per frame (centre square when none)."),
    face_size: int = typer.Option(224, help="Side of the face crops in pixels."),
    face_detector: str = typer.Option("auto", "--face-detector", callback=_one_of(detector_choices()),
                                      help="Face detector with --faces: auto (mtcnn when facenet-pytorch is "
                                      "installed, else haar), mtcnn, haar, none (centre squares)."),
    face_margin: float = typer.Option(0.2, "--face-margin", min=0.0,
                                      help="Fraction of the face box added on each side of the crop."),
    require_face: bool = typer.Option(False, "--require-face", help="With --faces: a clip where no frame has a "
                                      "face is recorded as failed."),
    face_scan_size: int = typer.Option(720, "--face-scan-size", min=1, help="With --faces: frames whose shorter "
                                       "side is larger are shrunk to it while decoding (bounds memory on 4K)."),
    face_device: str = typer.Option("cpu", "--face-device", help="With --faces: where MTCNN runs (cpu, cuda, "
                                    "cuda:1); a speed setting, not recorded in provenance."),
) -> None:
    """Frame features from the video column."""
    from .decode_video import VideoDecodeConfig
    from .inputs import DecodeSettings

    if require_face and not faces:
        raise typer.BadParameter("--require-face needs --faces", param_hint="--require-face")
    decode = DecodeSettings(video=VideoDecodeConfig(fps=fps, num_frames=num_frames, size=size, faces=faces,
                                                    face_size=face_size, face_detector=face_detector,
                                                    face_margin=face_margin, require_face=require_face,
                                                    face_scan_size=face_scan_size, face_device=face_device))
    _run("video", clips, store, extractor, model, level, batch_size, device, dtype, store_dtype, set_name, only,
         force, limit, workers, scheduler, option, decode, flush_rows, prefetch, decode_threads)


@app.command()
def text(
    clips: Path = CLIPS, store: Path = STORE, extractor: str = _choice("text"), model: str = MODEL,
    level: str = LEVEL, batch_size: int = BATCH, device: str = DEVICE, dtype: str = DTYPE,
    store_dtype: str = STORE_DTYPE, set_name: str = SET, only: Path = ONLY, force: bool = FORCE,
    limit: int = LIMIT, workers: int = WORKERS, scheduler: str = SCHEDULER, option: list[str] = OPTION,
    flush_rows: int = FLUSH, prefetch: int = PREFETCH, decode_threads: int = DECODE_THREADS,
    text_column: str = typer.Option("text", "--text-column", help="Subtitle column: text, english, chinese ..."),
) -> None:
    """Subtitle features from a text column of the clip table."""
    from .inputs import DecodeSettings

    _run("text", clips, store, extractor, model, level, batch_size, device, dtype, store_dtype, set_name, only,
         force, limit, workers, scheduler, option, DecodeSettings(text_column=text_column),
         flush_rows, prefetch, decode_threads)
