"""What the epoch-based trainers (ImageNet classification, video) share around the training loop:
the process group, run logging, training checkpoints, accuracy counts and the PNG curve."""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn

from ..checkpoint import CheckpointReadError, read_checkpoint

# the keys every training checkpoint of these trainers has
TRAINING_CHECKPOINT_KEYS = ("model", "epoch", "optimizer", "classes", "history")


Config = TypeVar("Config")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model; the message says which."""


# --------------------------------------------------------------------------- configs


def config_from_dict(cls: type[Config], values: Mapping[str, Any]) -> Config:
    """The dataclass ``cls`` from a dict, rejecting unknown keys and values of the wrong type
    (naming the key); numbers written as strings (YAML 1.1 reads ``1e6`` as one) become numbers,
    lists become tuples where fields are tuples (YAML has no tuples)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
    return cls(**{k: _typed_value(k, known[k].type, v) for k, v in values.items()})


def _typed_value(key: str, type_name: str, value: Any) -> Any:
    """``value`` as the field's type (a string of the dataclass's annotations, e.g. ``"float"``,
    ``"float | None"``); ``ValueError`` naming the key if it is not one."""
    kinds = [t.strip() for t in type_name.split("|")]
    if value is None and "None" in kinds:
        return None
    kind = kinds[0]
    if kind in ("int", "float") and isinstance(value, str):
        try:  # "1e6", "1.0e-4": numbers YAML 1.1 leaves as strings
            value = float(value) if kind == "float" else int(value)
        except ValueError:
            pass
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "tuple" and isinstance(value, list):
        return tuple(value)
    expected = {"int": int, "float": float, "bool": bool, "str": str, "tuple": tuple,
                "dict": dict}[kind]
    if not isinstance(value, expected) or (kind in ("int", "float") and isinstance(value, bool)):
        raise ValueError(f"config key {key!r} must be {type_name}, got {value!r} "
                         f"({type(value).__name__})")
    return value


def load_yaml_config(cls: type[Config], path: str | Path | None,
                     overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config (``None``: the dataclass defaults) and apply ``overrides``."""
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        values = yaml.safe_load(Path(path).read_text()) or {}
    values.update(overrides or {})
    return config_from_dict(cls, values)


def parse_set_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` arguments as a dict; each VALUE is parsed as YAML."""
    import yaml

    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


# --------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), NCCL on CUDA else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(rank, world, local_rank, device)


def all_reduce_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum floats over all processes (identity for one process)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=info.device)
    if info.world_size > 1:
        dist.all_reduce(t)
    return t.tolist()


def setup_run_logging(log: logging.Logger, output_dir: Path, info: DistInfo) -> None:
    """``log`` prints to stdout (rank 0 at INFO, the others only warnings) and, on rank 0, also
    to ``output_dir/log.txt``; handlers of an earlier run in this process are replaced."""
    log.setLevel(logging.INFO if info.is_main else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", "%m/%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if info.is_main:
        handlers.append(logging.FileHandler(output_dir / "log.txt"))
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)


# --------------------------------------------------------------------------- checkpoints


def load_training_checkpoint(path: str | Path,
                             required: Sequence[str] = TRAINING_CHECKPOINT_KEYS) -> dict[str, Any]:
    """Read a training checkpoint (a dict with the ``required`` keys) safely;
    :class:`CheckpointError` if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = read_checkpoint(path)
    except CheckpointReadError as e:
        raise CheckpointError(str(e)) from e
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in required):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint: it needs keys "
                              f"{list(required)}, has {have}. For weights alone use --weights")
    return ckpt


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load that turns key and shape mismatches into a :class:`CheckpointError`."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {source} does not fit model: {e}") from e


# --------------------------------------------------------------------------- metrics, plots


def accuracy_counts(logits: torch.Tensor, target: torch.Tensor, ks: Iterable[int] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits. logits (B, K), target (B,)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices  # (B, maxk)
    hit = top.eq(target[:, None])
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


def plot_history(history: list[dict[str, Any]], path: Path, loss_keys: Mapping[str, str],
                 score_keys: Mapping[str, str], score_label: str = "accuracy (%)") -> None:
    """Loss (left) and validation score (right) per epoch as a PNG. ``loss_keys`` and
    ``score_keys`` map a curve's legend label to its key in the history records; a curve joins
    the records that have its key (evaluation may run every few epochs only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, ylabel in ((ax_loss, loss_keys, "loss"), (ax_score, score_keys, score_label)):
        for label, key in keys.items():
            points = [(e, h[key]) for e, h in zip(epochs, history) if key in h]
            if points:
                ax.plot(*zip(*points), "o-", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if ax.lines:
            ax.legend()
    ax_score.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
