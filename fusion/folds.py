"""Cross-validation folds over a clip list: stratified, speaker-grouped, or one fixed split.

Folds hold integer index arrays into the clip list the caller passed, so the same folds apply to
every feature matrix aligned with that list. All splitters are deterministic for a given seed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

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
