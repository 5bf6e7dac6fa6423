"""Cross-validation folds over a clip list: stratified, speaker-grouped, or one fixed split.

Folds hold integer index arrays into the clip list the caller passed, so the same folds apply to
every feature matrix aligned with that list. :func:`inner_split` holds out part of one fold's
training side to pick the epoch on (so that the fold's validation clips are only ever reported).
All splitters are deterministic for a given seed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, StratifiedShuffleSplit

log = logging.getLogger(__name__)


@dataclass
class Fold:
    """One train/validation split.

    Attributes:
        index: fold number, from 0.
        train: sorted integer indices of the training clips.
        val: sorted integer indices of the validation clips.
    """

    index: int
    train: np.ndarray
    val: np.ndarray
    inner: np.ndarray | None = None  # training clips held out to pick the epoch (a subset of
    # ``train``), when already known (self-training reuses its base run's); None: made when needed


def make_folds(labels: Sequence[str], n_folds: int = 5, *, groups: Sequence[str] | None = None,
               seed: int = 0) -> list[Fold]:
    """Stratified k-fold splits, optionally keeping each group (speaker) on one side only.

    Args:
        labels: class of each clip (stratification target).
        n_folds: number of folds, at least 2.
        groups: group of each clip (e.g. the speaker). When given, ``StratifiedGroupKFold`` is used
            so that no group is ever in both train and validation of the same fold, and every group
            is in exactly one validation fold.
        seed: shuffling seed; the same seed gives the same folds.

    Returns:
        ``n_folds`` folds whose validation sets partition the clips.

    Raises:
        ValueError: fewer than 2 folds, more folds than clips, ``groups`` of the wrong length, or
            fewer distinct groups than folds.
    """
    y = np.asarray([str(v) for v in labels], dtype=object)
    n = len(y)
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if n < n_folds:
        raise ValueError(f"cannot make {n_folds} folds from {n} clips")
    x = np.zeros((n, 1))
    if groups is None:
        smallest = min(Counter(y.tolist()).values())
        if smallest < n_folds:
            log.warning("the rarest class has %d clips, fewer than the %d folds: some validation "
                        "folds will lack it", smallest, n_folds)
        splits = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y)
    else:
        g = np.asarray([str(v) for v in groups], dtype=object)
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries but labels has {n}")
        n_groups = len(set(g.tolist()))
        if n_groups < n_folds:
            raise ValueError(f"only {n_groups} distinct groups (speakers) for {n_folds} folds: "
                             f"grouped k-fold needs at least as many groups as folds")
        splits = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x, y, g)
    folds = [Fold(index=i, train=np.sort(tr).astype(np.int64), val=np.sort(va).astype(np.int64))
             for i, (tr, va) in enumerate(splits)]
    for f in folds:
        if len(f.val) == 0 or len(f.train) == 0:
            raise ValueError(f"fold {f.index} has an empty {'validation' if len(f.val) == 0 else 'training'} "
                             f"set; use fewer folds")
    log.debug("made %d %sfolds over %d clips (seed %d)", n_folds,
              "grouped " if groups is not None else "", n, seed)
    return folds


def fixed_split(names: Sequence[str], val_names: Sequence[str]) -> list[Fold]:
    """A single fold whose validation set is the given clips and whose training set is the rest.

    Args:
        names: the clip list the indices refer to (unique names).
        val_names: clips to validate on; order and repeats do not matter.

    Returns:
        A list with one :class:`Fold` (index 0).

    Raises:
        ValueError: duplicate names, no validation names, validation names not in ``names``
            (listed), or nothing left to train on.
    """
    names = [str(n) for n in names]
    position = {name: i for i, name in enumerate(names)}
    if len(position) != len(names):
        dups = [n for n, c in Counter(names).items() if c > 1]
        raise ValueError(f"{len(dups)} duplicate clip names: {', '.join(dups[:20])}")
    wanted = list(dict.fromkeys(str(v) for v in val_names))
    if not wanted:
        raise ValueError("no validation clips given")
    unknown = [v for v in wanted if v not in position]
    if unknown:
        more = f" (and {len(unknown) - 20} more)" if len(unknown) > 20 else ""
        raise ValueError(f"{len(unknown)} validation clips are not in the clip list: "
                         f"{', '.join(unknown[:20])}{more}")
    val = np.sort(np.array([position[v] for v in wanted], dtype=np.int64))
    is_val = np.zeros(len(names), dtype=bool)
    is_val[val] = True
    train = np.flatnonzero(~is_val).astype(np.int64)
    if len(train) == 0:
        raise ValueError(f"all {len(names)} clips are validation clips: nothing left to train on")
    return [Fold(index=0, train=train, val=val)]


def inner_split(labels: Sequence[str] | np.ndarray, frac: float = 0.15, *, groups: Sequence[str] | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``frac`` of one fold's training clips to select the epoch on.

    With ``groups`` (at least 2 distinct), whole groups are held out, like the outer folds:
    ``StratifiedGroupKFold`` with ``k = round(1 / frac)`` splits (at most one per group, at least
    2), one of which (chosen by the seed) is the held-out part, so the share is about ``1 / k`` of
    the groups.
    Without groups, or with fewer than 2 (logged), a stratified shuffle split holds out
    ``round(frac * n)`` clips (at least one per class where possible); when a class has a single
    clip or the held-out part is smaller than the number of classes, a plain shuffle split
    (logged).

    Args:
        labels: class of each training clip.
        frac: share to hold out, in (0, 1).
        groups: group (speaker) of each training clip, or ``None``.
        seed: shuffling seed; the same seed gives the same split.

    Returns:
        ``(fit, held)``: sorted positions into ``labels`` to train on and to select on; disjoint,
        together all positions, both non-empty.

    Raises:
        ValueError: ``frac`` outside (0, 1), fewer than 2 clips, or ``groups`` of the wrong length.
    """
    y = np.asarray([str(v) for v in labels], dtype=object)
    n = len(y)
    if not 0.0 < frac < 1.0:
        raise ValueError(f"inner_frac must be in (0, 1), got {frac}")
    if n < 2:
        raise ValueError(f"cannot hold out part of {n} training clip(s) to select the epoch on")
    x = np.zeros((n, 1))
    held: np.ndarray | None = None
    if groups is not None:
        g = np.asarray([str(v) for v in groups], dtype=object)
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} entries but labels has {n}")
        n_groups = len(set(g.tolist()))
        if n_groups < 2:
            log.warning("inner split: %d group(s) on the training side, fewer than 2; holding out "
                        "clips stratified by class instead of whole groups", n_groups)
        else:
            k = int(min(max(2, round(1.0 / frac)), n_groups))
            splits = [va for _, va in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y, g)]
            # which split is held out comes from the seed too (the splitter's own shuffling only breaks ties)
            for i in np.random.default_rng(seed).permutation(k):
                if 0 < len(splits[i]) < n:
                    held = splits[i]
                    break
            log.debug("inner split: %d of %d groups' clips held out (1/%d of the groups)",
                      len(set(g[held].tolist())) if held is not None else 0, n_groups, k)
    if held is None:
        n_held = min(max(1, int(round(frac * n))), n - 1)
        smallest = min(Counter(y.tolist()).values())
        n_classes = len(set(y.tolist()))
        if smallest >= 2 and n_classes <= n_held <= n - n_classes:
            _, held = next(StratifiedShuffleSplit(n_splits=1, test_size=n_held, random_state=seed).split(x, y))
        else:
            log.info("inner split: %d clips, %d classes, rarest %d: holding out %d clips at random "
                     "(too few to stratify)", n, n_classes, smallest, n_held)
            held = np.random.default_rng(seed).permutation(n)[:n_held]
    is_held = np.zeros(n, dtype=bool)
    is_held[held] = True
    return np.flatnonzero(~is_held).astype(np.int64), np.flatnonzero(is_held).astype(np.int64)
