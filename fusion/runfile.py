"""Run files: everything ``mer fuse train`` needs in one YAML or JSON file (``--config``).

Keys (all optional in the file; after merging, ``store``, ``features``, ``labels`` and ``out``
must be set)::

    store: feats.zarr                  # feature store
    features: [audio/whisper-base, video/openface-au, text/minilm]   # or "a,b,c"
    labels: labels.csv                 # name,discrete
    out: runs/agt                      # run directory
    clips: clips.csv                   # clip table (group_col, train.norm_col)
    group_col: speaker                 # grouped folds
    folds: 5                           # k (ignored with val)
    val: val.csv                       # fixed validation clips instead of k-fold
    classes: mer                       # mer, ravdess, a list or "a,b,c"; default: sorted labels
    preset: agt-small                  # mer fuse presets
    model: agt                         # agt | concat | attention | single
    model_config: {width: 64}          # fields of the model's config dataclass
    train: {epochs: 60, seed: 0, normalize: group, norm_col: speaker, select: inner}   # TrainConfig

Unknown keys, at the top level, in ``model_config`` or in ``train``, are refused with the key and
the file named. A run's saved ``config.json`` is a run file too (its ``sets`` and ``n_clips`` are
informational and ignored; it names no ``out``, so ``--out`` is needed), and so is the
``run.yaml`` every run writes (:func:`write_run_yaml`): all fields resolved, paths absolute.

Precedence, lowest first: dataclass defaults < preset < run file < command line. The preset is the
file's ``preset:`` unless ``--preset`` is given. ``model_config`` and ``train`` merge field by
field; every other key is replaced whole. Relative paths in a run file are relative to the
current directory, as on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import MODEL_CONFIGS, TrainConfig, config_from_dict, upgrade_model_config
from .presets import get_preset, preset_as_dict

log = logging.getLogger(__name__)

PATH_KEYS = ("store", "labels", "out", "clips", "val")
RUN_KEYS = (*PATH_KEYS, "features", "group_col", "folds", "classes", "preset", "model", "model_config", "train")
INFO_KEYS = ("sets", "n_clips", "resolved")  # written by runs (config.json, run.yaml); not settings
REQUIRED = {"store": "--store", "features": "--features", "labels": "--labels", "out": "--out"}


@dataclass
class RunSpec:
    """A fully resolved training run: the arguments of :func:`mer.fusion.run.train_run`."""

    store: Path
    features: list[str]
    labels: Path
    out: Path
    model: str = "agt"
    model_config: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    folds: int = 5
    clips: Path | None = None
    group_col: str | None = None
    val: Path | None = None
    classes: list[str] | None = None


def resolve_classes(value: str | list[str] | None) -> list[str] | None:
    """``mer``/``ravdess`` (the named label sets), ``"a,b,c"`` or a list; ``None`` for the sorted labels."""
    from mer.store.tables import MER_CLASSES, RAVDESS_CLASSES

    if value is None:
        return None
    if isinstance(value, str):
        named = {"mer": list(MER_CLASSES), "ravdess": list(RAVDESS_CLASSES)}
        return named.get(value) or [c.strip() for c in value.split(",") if c.strip()]
    return [str(c) for c in value]


def _features(value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    return [str(k) for k in value]


def read_run_file(path: Path) -> dict[str, Any]:
    """Read and check a run file (YAML, or JSON by a ``.json`` suffix); returns its settings.

    A file written by a run (``config.json`` with its ``sets``, ``run.yaml`` with ``resolved: true``)
    has every model field it knew: fields added since get their legacy values
    (:func:`~mer.fusion.config.upgrade_model_config`), so it replays the run it describes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} run file: {e}") \
            from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a run file is a mapping of keys (store, features, model, ...), got "
                         f"{type(data).__name__}")
    unknown = sorted(set(data) - set(RUN_KEYS) - set(INFO_KEYS))
    if unknown:
        nested = [k for k in unknown if k in {f.name for f in dataclasses.fields(TrainConfig)}]
        hint = f" ({', '.join(nested)}: a training field, under train:)" if nested else ""
        raise ValueError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{hint}; "
                         f"run file keys: {', '.join(RUN_KEYS)}")
    saved = "sets" in data or data.get("resolved") is True
    out = {k: v for k, v in data.items() if k in RUN_KEYS and v is not None}
    if "sets" in data:
        out["sets"] = data["sets"]  # a run's config.json: kept to say so in messages, never a setting
    for section in ("model_config", "train"):
        if section in out and not isinstance(out[section], dict):
            raise ValueError(f"{path}: {section} must be a mapping of fields, got {type(out[section]).__name__}")
    if "train" in out:
        _check_fields(TrainConfig, out["train"], f"{path}: train")
    if "model" in out and "model_config" in out:
        cls = _model_class(out["model"], str(path))
        _check_fields(cls, out["model_config"], f"{path}: model_config")
        if saved:
            out["model_config"] = upgrade_model_config(out["model"], out["model_config"])
    if "preset" in out:
        get_preset(out["preset"])
    return out


def _model_class(model: str, where: str) -> type:
    cls = MODEL_CONFIGS.get(model)
    if cls is None:
        raise ValueError(f"{where}: unknown model {model!r}; choose one of {', '.join(MODEL_CONFIGS)}")
    return cls


def _check_fields(cls: type, values: dict[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"({cls.__name__} fields: {', '.join(sorted(names))})")


def merge_layers(layers: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge setting layers, lowest first; returns the settings and which layer set each top-level key.

    ``model_config`` and ``train`` merge field by field; other keys are replaced whole.
    """
    merged: dict[str, Any] = {"model_config": {}, "train": {}}
    source: dict[str, str] = {}
    for name, layer in layers:
        for key, value in layer.items():
            if value is None:
                continue
            if key in ("model_config", "train"):
                merged[key].update(value)
                for sub in value:
                    source[f"{key}.{sub}"] = name
            else:
                merged[key] = value
                source[key] = name
    return merged, source


def resolve_run_spec(config: Path | None = None, preset: str | None = None,
                     options: dict[str, Any] | None = None) -> RunSpec:
    """The run described by a preset, a run file and command-line options (precedence in that order).

    Args:
        config: run file (YAML/JSON), e.g. a finished run's ``config.json`` or ``run.yaml``.
        preset: preset name; overrides the run file's ``preset:``.
        options: the command line's explicitly given settings, as run-file keys (``model_config``
            and ``train`` hold the ``-O`` / ``-T`` fields and the named training options).
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    file_layer = read_run_file(config) if config is not None else {}
    preset = preset or file_layer.get("preset")
    layers: list[tuple[str, dict[str, Any]]] = []
    if preset:
        layers.append((f"preset {preset}", preset_as_dict(preset)))
    if config is not None:
        layers.append((f"run file {config}", file_layer))
    layers.append(("command line", options))
    merged, source = merge_layers(layers)
    merged.pop("preset", None)
    merged.pop("sets", None)
    model = merged.get("model", "agt")
    if preset and get_preset(preset).model != model:
        raise ValueError(f"preset {preset} is for model {get_preset(preset).model!r}, but the {source['model']} "
                         f"sets model {model!r}")
    cls = _model_class(model, source.get("model", "defaults"))
    bad = sorted(set(merged["model_config"]) - {f.name for f in dataclasses.fields(cls)})
    if bad:
        where = ", ".join(sorted({source[f'model_config.{k}'] for k in bad}))
        raise ValueError(f"model {model!r} ({cls.__name__}) has no field(s) {', '.join(map(repr, bad))} "
                         f"(set by {where})")
    train = dict(merged["train"])
    if train.get("norm_col") and "normalize" not in train:
        train["normalize"] = "group"  # as on the command line: a normalisation column means group mode
    lacking = [f"{k} ({flag})" for k, flag in REQUIRED.items() if k not in merged]
    if lacking:
        hint = " (a saved config.json names no run directory: pass --out)" \
            if config is not None and "out" not in merged and "sets" in file_layer else ""
        raise ValueError(f"not set: {', '.join(lacking)}; give them on the command line or in the run file{hint}")
    out = Path(merged["out"])
    if config is not None and source.get("out", "").startswith("run file") \
            and out.resolve() == Path(config).resolve().parent and (out / "metrics.json").is_file():
        raise ValueError(f"{config} would write over the run it comes from ({out}); pass --out NEW_DIR to replay it")
    return RunSpec(
        store=Path(merged["store"]), features=_features(merged["features"]), labels=Path(merged["labels"]),
        out=out, model=model, model_config=dataclasses.asdict(config_from_dict(cls, merged["model_config"])),
        train=config_from_dict(TrainConfig, train), folds=int(merged.get("folds", 5)),
        clips=Path(merged["clips"]) if merged.get("clips") else None, group_col=merged.get("group_col"),
        val=Path(merged["val"]) if merged.get("val") else None, classes=resolve_classes(merged.get("classes")))


def train_spec(spec: RunSpec, progress: bool = True) -> dict[str, Any]:
    """Train the run ``spec`` describes (:func:`mer.fusion.run.train_run`); returns its metrics."""
    from .run import train_run

    log.info("training %s on %s into %s", spec.model, ", ".join(spec.features), spec.out)
    return train_run(spec.store, spec.features, spec.labels, spec.out, model=spec.model,
                     model_config=spec.model_config, train=spec.train, folds=spec.folds, clips_csv=spec.clips,
                     group_col=spec.group_col, val=spec.val, classes=spec.classes, progress=progress)


def train_from_options(config: Path | None = None, preset: str | None = None,
                       options: dict[str, Any] | None = None, progress: bool = True) -> tuple[RunSpec, dict[str, Any]]:
    """``mer fuse train``: resolve preset < run file < command line, then train; returns (spec, metrics)."""
    spec = resolve_run_spec(config, preset, options)
    return spec, train_spec(spec, progress)


def run_file_dict(spec: RunSpec) -> dict[str, Any]:
    """The run file of ``spec``: every field resolved, paths absolute (replayable from any directory)."""

    def absolute(p: Path | None) -> str | None:
        return None if p is None else str(Path(p).resolve())

    return {"resolved": True, "store": absolute(spec.store), "features": list(spec.features),
            "labels": absolute(spec.labels), "out": absolute(spec.out), "clips": absolute(spec.clips),
            "group_col": spec.group_col, "folds": spec.folds, "val": absolute(spec.val),
            "classes": list(spec.classes) if spec.classes is not None else None, "model": spec.model,
            "model_config": dict(spec.model_config), "train": dataclasses.asdict(spec.train)}


def write_run_yaml(spec: RunSpec, path: Path) -> Path:
    """Write ``spec`` as a replayable YAML run file (``mer fuse train --config PATH --out NEW``)."""
    path = Path(path)
    header = ("# Written by `mer fuse train`: every setting of this run, resolved; paths absolute.\n"
              "# Replay: mer fuse train --config THIS_FILE --out NEW_DIR  (command-line options override it)\n")
    path.write_text(header + yaml.safe_dump(run_file_dict(spec), sort_keys=False, default_flow_style=False),
                    encoding="utf-8")
    return path
