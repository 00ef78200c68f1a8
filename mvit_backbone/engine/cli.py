"""The command line shared by the tools in ``tools/``: detectron2's conventions, errors a user
can fix in one line, and a CPU fallback.

A tool built on it reads like this::

    parser = tool_parser(__doc__, example="tools/x.py --config-file configs/Demo/... key=value")
    parser.add_argument(...)
    args = parser.parse_args()
    run_tool(main, args)          # main(args) raises UserError (or ValueError) for bad input

- ``--config-file FILE``, then the tool's flags, then ``key=value`` overrides as positional
  arguments after the flags (``argparse.REMAINDER``, as detectron2's tools take them);
- ``--help`` shows every default and one example;
- an error the user caused (a typo in a path or a key, an unreadable file) is one line,
  ``error: ...`` on stderr, exit status 2; ``--debug`` shows the traceback instead;
- :func:`load_lazy_config` checks the config path and every override key (naming the close
  matches and the valid keys), :func:`use_cpu_without_gpu` runs a CUDA config on the CPU of a
  machine without a GPU, with one log line.
"""
from __future__ import annotations

import argparse
import difflib
import inspect
import logging
import os
import sys
from typing import Any, Callable, Iterable, Sequence

import torch

logger = logging.getLogger("mvit_backbone.engine.cli")


class UserError(Exception):
    """A problem with the user's input (a path, a key, a file) that one line explains."""


# What a user's typo or bad file raises in this package (each names the problem and the file).
# A program error (TypeError, AttributeError, ...) still shows its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help (unless the help already says it, or there is
    none to show); the description and example kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, "", False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def tool_parser(description: str, example: str, config_file: str = "required",
                opts: bool = True) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with detectron2's conventions.

    Args:
        description: the tool's docstring (shown first in ``--help``).
        example: one command line, shown under "example:" at the end of ``--help``.
        config_file: "required", "optional" or "none": whether there is a ``--config-file``.
        opts: add the positional ``opts`` (``key=value`` overrides after the flags).
    """
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter,
                                     epilog=f"example:\n  {example}")
    if config_file != "none":
        parser.add_argument("--config-file", metavar="FILE", required=config_file == "required",
                            default=None if config_file == "required" else "",
                            help="LazyConfig (.py) or yacs (.yaml) config file")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    if opts:
        parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                            help="config overrides key=value, after the flags "
                                 "(e.g. train.device=cpu)")
    return parser


def is_override(token: str) -> bool:
    """``key=value`` that is not an existing file (a file name may contain '=')."""
    return "=" in token and not token.startswith("-") and not os.path.exists(token)


def move_overrides(values: list[str], opts: list[str]) -> tuple[list[str], list[str]]:
    """Split ``key=value`` tokens that a multi-value flag (``nargs="+"``) swallowed from its
    values; returns (values, the swallowed overrides followed by ``opts``)."""
    kept = [v for v in values if not is_override(v)]
    return kept, [v for v in values if is_override(v)] + list(opts)


def error_message(error: BaseException) -> str:
    """One line for ``error``: its message (a KeyError's without the quotes)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    return str(error) or type(error).__name__


def run_tool(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> Any:
    """Run ``main(args)``; a :data:`USER_ERRORS` exception becomes ``error: <message>`` on
    stderr and exit status 2, unless ``args.debug`` (then it propagates with its traceback)."""
    from detectron2.utils.logger import setup_logger

    setup_logger(name="mvit_backbone")
    try:
        return main(args)
    except USER_ERRORS as e:
        if getattr(args, "debug", False):
            raise
        print(f"error: {error_message(e)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _close_matches(word: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def check_file(path: str, what: str) -> None:
    """UserError naming ``path`` (and similarly named files beside it) if it is not a file."""
    if os.path.isfile(path):
        return
    folder = os.path.dirname(path) or "."
    hint = ""
    if os.path.isdir(folder):
        hint = _close_matches(os.path.basename(path), os.listdir(folder))
    raise UserError(f"{what} {path} does not exist{hint}")


def _accepted_arguments(target: Any) -> set[str] | None:
    """Keyword arguments ``target`` (a class or function) accepts; None if it takes **kwargs
    that go nowhere we can see."""
    if isinstance(target, type):
        names: set[str] = set()
        for klass in target.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names |= {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                      and p.name != "self"}
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                return names
        return None
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind != p.VAR_POSITIONAL}


def _valid_keys(node: Any) -> set[str] | None:
    """Keys an override may name below ``node``; None when anything goes."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, ListConfig):
        return {str(i) for i in range(len(node))}
    if not isinstance(node, (DictConfig, dict)):
        return set()
    keys = {str(k) for k in node.keys() if k != "_target_"}
    if "_target_" in node:
        accepted = _accepted_arguments(node["_target_"])
        if accepted is None:
            return None
        keys |= accepted
    return keys


def check_override_keys(cfg: Any, opts: Sequence[str]) -> None:
    """UserError for an override that is not ``key=value`` or names a key the config (or the
    class a ``LazyCall`` node builds) does not have: the message names the close matches and
    the valid keys at that level."""
    for item in opts:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UserError(f"config override {item!r} is not key=value")
        node, walked = cfg, []
        for part in key.split("."):
            valid = _valid_keys(node)
            if valid is None:
                break
            if part not in valid:
                where = ".".join(walked) or "the config"
                if not valid:
                    raise UserError(f"unknown config key {key!r}: {where} is a value, not a group")
                raise UserError(f"unknown config key {key!r}: {where} has no {part!r}"
                                f"{_close_matches(part, valid)} (valid keys: "
                                f"{', '.join(sorted(valid))})")
            try:
                node = node[int(part)] if part.isdigit() else node.get(part)
            except (IndexError, KeyError):
                node = None
            walked.append(part)
            if node is None:
                break


def load_lazy_config(path: str, opts: Sequence[str] = ()) -> Any:
    """``LazyConfig.load(path)`` with ``opts`` applied, after checking that the file exists and
    that every override names a known key (:func:`check_override_keys`)."""
    from detectron2.config import LazyConfig

    check_file(path, "config file")
    if not path.endswith((".py", ".yaml", ".yml")):
        raise UserError(f"config file {path} is neither a LazyConfig (.py) nor a yacs (.yaml) file")
    cfg = LazyConfig.load(path)
    check_override_keys(cfg, opts)
    # overrides typed as the keys' current values (numbers as numbers, errors naming the key)
    from .lazy_train import apply_overrides

    return apply_overrides(cfg, list(opts))


def merge_yacs_overrides(cfg: Any, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list(opts)`` with an unknown key reported as a UserError naming the
    close matches among the keys of its parent node."""
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        message = error_message(e)
        if not message.startswith("Non-existent"):  # yacs: "Non-existent key: A.B.C"
            raise UserError(f"config overrides: {message}") from e
        key = message.split(":", 1)[1].strip()
        parent_path, _, leaf = key.rpartition(".")
        parent = cfg
        for part in filter(None, parent_path.split(".")):
            parent = parent.get(part, {}) if isinstance(parent, dict) else {}
        valid = [str(k) for k in parent] if isinstance(parent, dict) else []
        raise UserError(f"unknown config key {key!r}{_close_matches(leaf, valid)}"
                        + (f" (valid keys of {parent_path or 'the config'}: "
                           f"{', '.join(sorted(valid))})" if valid else "")) from e


def use_cpu_without_gpu(cfg: Any) -> bool:
    """Set a LazyConfig's ``train.device`` (or a yacs config's ``MODEL.DEVICE``) to "cpu" when
    it names CUDA and no GPU is there, with one log line. Returns whether it changed it."""
    if torch.cuda.is_available():
        return False
    if hasattr(cfg, "MODEL") and hasattr(cfg.MODEL, "DEVICE"):
        if not str(cfg.MODEL.DEVICE).startswith("cuda"):
            return False
        cfg.MODEL.DEVICE = "cpu"
        logger.warning("no GPU found: running on the CPU (MODEL.DEVICE cpu)")
        return True
    train = cfg.get("train") if hasattr(cfg, "get") else None
    if train is None or not str(train.get("device", "cpu")).startswith("cuda"):
        return False
    train.device = "cpu"
    logger.warning("no GPU found: running on the CPU (train.device=cpu)")
    return True


def register_config_datasets(cfg: Any, validate: bool = True) -> None:
    """Register the datasets a LazyConfig brings itself: the demo config's synthetic shapes
    (its ``demo`` section; written to ``demo.dataset_root`` when missing)."""
    if "demo" in cfg:
        from .demo import register_demo_datasets

        register_demo_datasets(cfg, validate=validate)


def check_datasets_registered(cfg: Any, splits: Sequence[str] = ("train", "test")) -> None:
    """UserError naming a dataset that ``cfg.dataloader.<split>.dataset.names`` asks for but no
    one registered, with the registered names that come close."""
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    for split in splits:
        loader = cfg.dataloader.get(split) if "dataloader" in cfg else None
        if loader is None or "dataset" not in loader or "names" not in loader.dataset:
            continue
        names = loader.dataset.names
        for name in [names] if isinstance(names, str) else list(names):
            if name not in registered:
                raise UserError(
                    f"dataset {name!r} (dataloader.{split}.dataset.names) is not registered"
                    f"{_close_matches(name, registered)}; register a COCO-format dataset with "
                    f"--register-coco {name} JSON IMAGE_DIR")
