"""A stage: clip table x decoder x extractor x store writer, run over the clips not yet done.

Decoding runs ahead of the model in a thread pool with a bounded number of clips in flight, so
the model never waits when decoding is faster, and memory is bounded by ``prefetch``, not by the
number of clips (``prefetch=0``: no pool, each clip is decoded in the calling thread just before it
is needed). Decoded clips are grouped by length over a few batches (audio, text), so a
forward pass is not mostly padding. One bad clip (missing or corrupt file, no audio track, empty
subtitle, NaN output) is recorded in the ledger with its reason and the run goes on; the stage's
report counts it and the CLI exits non-zero.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mer.extractors.base import (
    ClipRef,
    Extractor,
    ExtractorConfig,
    Features,
    ItemError,
    ModelLoadError,
    get_extractor,
)
from mer.store import ClipValueError, FeatureSet, FeatureStore, Provenance, ProvenanceMismatch, hash_path
from mer.store.provenance import read_finetune_record
from mer.store.tables import ClipTable, TableError, read_clip_table, read_names

from .decode_errors import DecodeError
from .inputs import DecodeSettings, load_item

log = logging.getLogger(__name__)


@dataclass
class StageSpec:
    """Everything a stage needs; plain data, so a dask worker can rebuild the stage from it.

    Attributes:
        modality: ``video``, ``audio`` or ``text``.
        clips: the clip table CSV.
        store: the feature store directory.
        extractor: registered extractor name.
        config: fields of the extractor's config dataclass (model, device, dtype, level, ...).
        key: feature set key ``<modality>/<name>``; default derived from extractor, model and level.
        store_dtype: dtype of the stored vectors (``float16`` or ``float32``).
        decode: decode settings (recorded as provenance).
        prefetch: decoded clips in flight ahead of the model, in ``decode_threads`` threads (None:
            four batches, or one length group when that is more; 0: serial, no decode thread: each
            clip is decoded in the calling thread just before it is needed).
        decode_threads: threads decoding media.
        flush_rows: clips per committed segment (at most this much work is lost on a kill).
        flush_seconds: also commit when the oldest buffered clip is this old (bounds the work a kill loses).
        length_groups: this many batches of decoded clips are sorted by length before they are cut
            into batches, so clips of similar length share a forward pass and little of it is padding
            (0: 8 for audio and text, 1 for video, whose clips are large and of one size).
    """

    modality: str
    clips: Path
    store: Path
    extractor: str
    config: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    store_dtype: str = "float16"
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    prefetch: int | None = None
    decode_threads: int = 2
    flush_rows: int = 256
    flush_seconds: float = 5.0
    length_groups: int = 0

    def groups(self) -> int:
        """Batches of decoded clips sorted by length together (see :attr:`length_groups`)."""
        if self.length_groups > 0:
            return self.length_groups
        return 1 if self.modality == "video" else 8

    def ahead(self, batch_size: int) -> int:
        """Decoded clips in flight ahead of the model (see :attr:`prefetch`; 0: serial)."""
        if self.prefetch is None:
            return max(4, self.groups()) * max(1, batch_size)  # the next group decodes while the model runs this one
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be None (default), 0 (serial) or positive, got {self.prefetch}")
        return self.prefetch

    def build_config(self) -> ExtractorConfig:
        """The extractor's config dataclass filled from :attr:`config` (unknown fields are an error)."""
        cls = get_extractor(self.extractor)
        if cls.modality not in (self.modality, "any"):
            raise ValueError(f"extractor {self.extractor!r} is for {cls.modality}, not {self.modality}")
        fields = cls.config_class.__dataclass_fields__
        unknown = sorted(set(self.config) - set(fields))
        if unknown:
            raise ValueError(f"extractor {self.extractor!r} has no option(s) {', '.join(unknown)}; "
                             f"options: {', '.join(fields)}")
        return cls.config_class(**self.config)

    def set_key(self, cfg: ExtractorConfig) -> str:
        """:attr:`key`, or ``<modality>/<extractor>-<model name>-<level>``."""
        if self.key:
            return self.key if "/" in self.key else f"{self.modality}/{self.key}"
        model = Path(cfg.model.rstrip("/")).name or "model"
        name = re.sub(r"[^A-Za-z0-9._+-]+", "-", f"{self.extractor}-{model}-{cfg.level}").strip("-")
        return f"{self.modality}/{name}"


@dataclass
class StageReport:
    """Outcome of a stage run."""

    key: str
    total: int = 0  # clips selected
    done: int = 0  # extracted and written in this run
    skipped: int = 0  # already done before this run
    failed: dict[str, str] = field(default_factory=dict)  # clip -> reason, this run
    truncated: dict[str, int] = field(default_factory=dict)  # clip -> tokens cut off (input over the model's max length)
    partial: dict[str, str] = field(default_factory=dict)  # clip -> why only part of its media file decoded
    faces: dict[str, tuple[int, int]] = field(default_factory=dict)  # clip -> (frames with a face, frames
    # sampled), video with face crops only
    seconds: float = 0.0

    @property
    def clips_per_s(self) -> float:
        """Extraction rate of this run."""
        return self.done / self.seconds if self.seconds > 0 else 0.0


def build_extractor(spec: StageSpec) -> Extractor:
    """Instantiate (load) the stage's extractor; any failure becomes one clear :class:`ModelLoadError`."""
    cfg = spec.build_config()
    try:
        return get_extractor(spec.extractor)(cfg)
    except Exception as exc:  # noqa: BLE001 - loaders raise anything (OSError, HF errors, ValueError...)
        raise ModelLoadError(f"cannot load extractor {spec.extractor!r} with model {cfg.model!r}: "
                             f"{type(exc).__name__}: {exc}") from exc


def provenance_of(spec: StageSpec, extractor: Extractor) -> Provenance:
    """Provenance of the vectors this stage writes."""
    weights = extractor.weights_path()
    decode = {**spec.decode.record(spec.modality), **extractor.decode_settings()}
    config = extractor.identity()  # as resolved: compute_type "auto" is recorded as what it ran with
    if extractor.features_version() > 1:  # recorded only once it changed: older sets keep matching
        config["features_version"] = extractor.features_version()
    return Provenance(extractor=spec.extractor, config=config, model=extractor.config.model,
                      weights_hash=hash_path(weights) if weights is not None else None, decode=decode,
                      finetune=read_finetune_record(weights), revision=extractor.revision())


def open_set(spec: StageSpec, extractor: Extractor, *, force: bool) -> FeatureSet:
    """Create or reopen the stage's feature set; a different provenance is refused unless ``force``."""
    return create_set(spec, spec.set_key(extractor.config), level=extractor.config.level, dim=extractor.dim,
                      provenance=provenance_of(spec, extractor), force=force)


def create_set(spec: StageSpec, key: str, *, level: str, dim: int, provenance: Provenance,
               force: bool) -> FeatureSet:
    """Create or reopen set ``key`` of the stage's store from what an extractor reported (level, dim,
    provenance: see :func:`open_set`); a different provenance is refused unless ``force``."""
    store = FeatureStore(spec.store)
    kwargs = dict(level=level, dim=dim, provenance=provenance, dtype=spec.store_dtype)
    try:
        return store.create(key, **kwargs)
    except ProvenanceMismatch:
        if not force:
            raise
        log.warning("--force: %s had another provenance; starting it anew", key)
        return store.create(key, force=True, **kwargs)


def select_names(table: ClipTable, only: Path | list[str] | None, limit: int | None) -> list[str]:
    """Clip names of the table, restricted to ``only`` (file or list) and the first ``limit``."""
    names = table.names
    if only is not None:
        wanted = read_names(only) if isinstance(only, Path) else list(only)
        known = set(names)
        missing = [n for n in wanted if n not in known]
        if missing:
            raise TableError(f"{len(missing)} clips of --only are not in {table.path}: {', '.join(missing[:20])}")
        names = wanted
    return names[:limit] if limit is not None else names


def decoded(spec: StageSpec, table: ClipTable, names: list[str], pool: ThreadPoolExecutor | None,
            prefetch: int) -> Iterator[tuple[str, Any, str | None]]:
    """``(name, item, None)`` or ``(name, None, reason)`` in order, decoding up to ``prefetch`` ahead
    in ``pool``; without a pool each clip is decoded here, in the caller's thread, when it is asked for."""
    if pool is None:
        for name in names:
            try:
                item = load_item(spec.modality, table, name, spec.decode)
            except DecodeError as exc:
                yield name, None, exc.problem
            else:
                yield name, item, None
        return
    pending: deque[tuple[str, Future[Any]]] = deque()
    todo = iter(names)

    def submit() -> None:
        name = next(todo, None)
        if name is not None:
            pending.append((name, pool.submit(load_item, spec.modality, table, name, spec.decode)))

    for _ in range(max(1, prefetch)):
        submit()
    while pending:
        name, fut = pending.popleft()
        submit()
        try:
            yield name, fut.result(), None
        except DecodeError as exc:
            yield name, None, exc.problem


def item_length(item: Any) -> int:
    """How long a decoded clip is, for grouping by length: samples, characters or frames."""
    for attr in ("samples", "text", "frames"):
        value = getattr(item, attr, None)
        if value is not None:
            return len(value)
    return 0


def length_batches(items: list[Any], batch_size: int, *, sort: bool = True) -> Iterator[list[Any]]:
    """Cut ``items`` into batches of ``batch_size``, longest first when ``sort`` (less padding)."""
    if sort:
        items = sorted(items, key=item_length, reverse=True)
    for lo in range(0, len(items), batch_size):
        yield items[lo:lo + batch_size]


def extract_isolated(extractor: Extractor, items: list[Any]) -> list[tuple[Any, Features | None, str | None]]:
    """Run a batch; when it fails, find the clip(s) responsible instead of losing the batch."""
    try:
        feats = extractor.extract(items)
        return [(it, f, None) for it, f in zip(items, feats, strict=True)]
    except ItemError as exc:
        bad = [it for it in items if it.name == exc.name]
        rest = [it for it in items if it.name != exc.name]
        if not bad:  # an ItemError naming no item of the batch: treat as a batch failure
            return _one_by_one(extractor, items, exc)
        return [(it, None, exc.problem) for it in bad] + (extract_isolated(extractor, rest) if rest else [])
    except Exception as exc:  # noqa: BLE001 - a model error must not kill the run; isolate the culprit
        return _one_by_one(extractor, items, exc)


def _one_by_one(extractor: Extractor, items: list[Any], exc: BaseException) -> list[tuple[Any, Features | None, str | None]]:
    if len(items) == 1:
        log.debug("clip %s failed", items[0].name, exc_info=exc)
        return [(items[0], None, f"{type(exc).__name__}: {exc}")]
    out = []
    for it in items:
        out.extend(extract_isolated(extractor, [it]))
    return out


def clip_clock(item: Any, times: np.ndarray | None) -> np.ndarray | None:
    """Frame times on the clip clock shared by every stage (:mod:`mer.pipeline.media_timing`).

    Extractors give audio frame times from the first decoded sample; an :class:`AudioClip` whose
    audio starts after the video (``offset > 0``) moves them here, in one place for every
    extractor. Video frame times are already on the clip clock (no ``offset``).
    """
    offset = float(getattr(item, "offset", 0.0) or 0.0)
    if times is None or offset == 0.0:
        return times
    return (np.asarray(times, np.float64) + offset).astype(np.asarray(times).dtype)


def run_names(spec: StageSpec, extractor: Extractor, fs: FeatureSet, table: ClipTable, names: list[str],
              report: StageReport, *, consolidate: bool = True, on_clip: Any = None) -> None:
    """Decode, extract and write ``names`` into ``fs``; failures go to the ledger and ``report``."""
    bs = max(1, extractor.config.batch_size)
    groups = spec.groups()
    by_length = groups > 1  # one group is table order
    prefetch = spec.ahead(bs)
    writer = fs.writer(flush_rows=spec.flush_rows, flush_seconds=spec.flush_seconds,
                       consolidate_every=32 if consolidate else 0)

    def fail(name: str, reason: str) -> None:
        writer.fail(name, reason)
        report.failed[name] = reason

    def flush_batch(batch: list[Any]) -> None:
        for item, feats, problem in extract_isolated(extractor, batch):
            if feats is None:
                fail(item.name, problem or "unknown error")
            else:
                try:
                    extras = {k: float(v) for k, v in feats.notes.items() if isinstance(v, (int, float))}
                    if getattr(item, "faces", None) is not None:
                        extras["faces"] = float(item.faces)
                    if getattr(item, "partial", None):  # a damaged file: what decoded before the damage
                        extras["partial_decode"] = 1.0
                    per_frame = getattr(item, "frame_extras", None) or None  # e.g. face box per decoded frame
                    writer.add(item.name, feats.values, times=clip_clock(item, feats.times), extras=extras,
                               frame_extras=per_frame)
                    report.done += 1
                    if extras.get("partial_decode"):
                        report.partial[item.name] = str(item.partial)
                    if "faces" in extras:
                        report.faces[item.name] = (int(item.faces), int(len(item.times)))
                    if extras.get("truncated_tokens"):
                        report.truncated[item.name] = int(extras["truncated_tokens"])
                        log.info("%s: clip %s cut to the model's max length (%d tokens dropped)", fs.key,
                                 item.name, report.truncated[item.name])
                except ClipValueError as exc:
                    fail(item.name, exc.problem)
            if on_clip:
                on_clip()

    threaded = prefetch > 0 and extractor.decodes
    with (ThreadPoolExecutor(max_workers=max(1, spec.decode_threads), thread_name_prefix="decode") if threaded
          else nullcontext()) as pool:
        try:
            held: list[Any] = []  # decoded clips waiting to be grouped by length
            stream = (decoded(spec, table, names, pool, prefetch) if extractor.decodes
                      else ((n, ClipRef(n), None) for n in names))
            for name, item, problem in stream:
                if item is None:
                    fail(name, problem or "decode failed")
                    if on_clip:
                        on_clip()
                    continue
                held.append(item)
                if len(held) >= bs * groups:
                    for batch in length_batches(held, bs, sort=by_length):
                        flush_batch(batch)
                    held = []
            for batch in length_batches(held, bs, sort=by_length):
                flush_batch(batch)
        finally:
            writer.flush()
            if consolidate:
                writer.close()


def run_stage(spec: StageSpec, *, only: Path | list[str] | None = None, limit: int | None = None,
              force: bool = False, workers: int = 0, scheduler: str | None = None,
              progress: bool = True) -> StageReport:
    """Run a stage over the clip table: skip done clips (all selected ones with ``force``)."""
    table = read_clip_table(spec.clips)
    names = select_names(table, only, limit)
    if workers or scheduler:  # the client loads no model: a worker does (see .distributed)
        from .distributed import run_stage_distributed

        return run_stage_distributed(spec, table, names, force=force, workers=workers, scheduler=scheduler,
                                     progress=progress)
    extractor = build_extractor(spec)
    fs = open_set(spec, extractor, force=force)
    done = set() if force else fs.done_names()
    todo = [n for n in names if n not in done]
    report = StageReport(key=fs.key, total=len(names), skipped=len(names) - len(todo))
    log.info("%s: %d clips, %d already done, %d to extract", fs.key, len(names), report.skipped, len(todo))
    t0 = time.perf_counter()
    if progress and todo:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]} clips/s"), TimeRemainingColumn()]
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(fs.key, total=len(todo), rate="-")

            def tick() -> None:
                bar.advance(task)
                elapsed = time.perf_counter() - t0
                bar.update(task, rate=f"{bar.tasks[task].completed / elapsed:.1f}" if elapsed > 0 else "-")

            run_names(spec, extractor, fs, table, todo, report, on_clip=tick)
    else:
        run_names(spec, extractor, fs, table, todo, report)
    report.seconds = time.perf_counter() - t0
    return report
