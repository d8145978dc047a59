"""Optimisers, learning-rate schedules, parameter groups, freezing and training stages.

Everything here is a pure function of a module and a config section, so that methods
trained in several phases can be described in YAML alone:

* LIFT-style: train the descriptor, then the orientation estimator, then the detector,
  each stage with its own trainable sub-modules and loss terms;
* DELF-style: fine-tune the backbone, then train the attention head with the backbone
  frozen;
* a single stage with some sub-modules frozen, or with per-module learning-rate scales.

**Parameter patterns.** Wherever a config names parameters (``optim.groups[i].params``,
``optim.freeze``, ``train.stages[i].trainable`` / ``freeze``, the prefixes of
:func:`init_from_checkpoint`), a pattern is matched against qualified names as returned by
``module.named_parameters()`` (or state-dict keys), relative to the module passed in:

* without glob characters it is a module-name prefix on dot boundaries: ``"backbone"``
  matches ``backbone`` and ``backbone.conv1.weight`` but not ``backbone2.weight``;
* with ``*``, ``?`` or ``[...]`` it is an :mod:`fnmatch` glob (case-sensitive, ``*`` also
  crosses dots) that matches a name or any name below it: ``"*.bias"``, ``"head*"``,
  ``"blocks.*.norm"``.

A pattern that matches no parameter of the module is a :class:`ConfigError` naming the
config key and the pattern, never a silent no-op.

**Trainer integration.** Per training stage: ``build_stage_optimizer(model, optim_conf,
stage)`` (a fresh optimiser: moments restart at a stage boundary), and before every step
``set_lr(optimizer, lr_at(step, stage_optim(optim_conf, stage), stage.start, stage.end))``.
With the default config this is exactly the current ``torch.optim.Adam`` plus step-halving
behaviour of the trainer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from keypointlab.config import ConfigError, merge

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("step_halving", "constant", "cosine", "exponential")

OPTIM_DEFAULTS: dict[str, Any] = {
    # torch optimiser: "adam" (L2 weight decay added to the gradient, as torch.optim.Adam),
    # "adamw" (decoupled weight decay) or "sgd" (with `momentum`).
    "name": "adam",
    "lr": 0.001,  # base learning rate (of the default parameter group)
    "weight_decay": 0.0,  # default weight decay (a group may override it)
    "momentum": 0.9,  # sgd only
    "betas": [0.9, 0.999],  # adam / adamw only
    # learning rate after warm-up, as a function of the steps since the stage started:
    # step_halving: lr * 0.5 ** (s // lr_decay_steps), constant when lr_decay_steps is 0;
    # constant: lr; exponential: lr * gamma ** s;
    # cosine: from lr down to lr * min_lr_ratio over lr_decay_steps steps (0: over the
    # rest of the stage), then stays there.
    "schedule": "step_halving",
    "lr_decay_steps": 0,  # step_halving period / cosine length in steps (0: see above)
    "gamma": 1.0,  # exponential: per-step factor (1.0: no decay)
    "warmup_steps": 0,  # linear warm-up: lr * (s + 1) / warmup_steps for s < warmup_steps
    "min_lr_ratio": 0.0,  # cosine: final lr as a fraction of lr
    # parameter groups, each {"params": pattern or list of patterns, "lr_scale": float,
    # "weight_decay": float or null (null: the default)}; a parameter goes to the first
    # group with a matching pattern, the others to the default group (lr_scale 1).
    "groups": [],
    # patterns of parameters to freeze: requires_grad False and left out of the optimiser.
    "freeze": [],
}

GROUP_DEFAULTS: dict[str, Any] = {
    "params": None,  # pattern or list of patterns (required)
    "lr_scale": 1.0,  # the group's lr is the base lr (lr_at) times this
    "weight_decay": None,  # None: optim.weight_decay
}

STAGE_DEFAULTS: dict[str, Any] = {
    "name": "",  # for logs and errors ("" : "stage<i>")
    "steps": 0,  # steps in this stage (0 only on the last stage: up to train.steps)
    "trainable": [],  # patterns of the parameters trained in this stage ([]: all)
    "freeze": [],  # patterns frozen in this stage, on top of optim.freeze
    "loss": {},  # overrides of the loss section during this stage
    "optim": {},  # overrides of the optim section during this stage
}


# -- patterns ------------------------------------------------------------------------------
def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def matches(name: str, pattern: str) -> bool:
    """Whether the qualified ``name`` is selected by ``pattern`` (see the module docstring)."""
    if _is_glob(pattern):
        return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")
    return name == pattern or name.startswith(pattern + ".")


def _pattern_list(value: Any, key: str) -> list[str]:
    """``value`` as a list of non-empty pattern strings (a single string is allowed)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"config key {key!r}: expected a pattern or a list, got {value!r}")
    for i, p in enumerate(items):
        if not isinstance(p, str) or not p:
            raise ConfigError(f"config key '{key}[{i}]': expected a non-empty pattern, got {p!r}")
    return list(items)


def _known_prefixes(names: Sequence[str], depth: int = 2, limit: int = 12) -> str:
    prefixes = list(dict.fromkeys(".".join(n.split(".")[:depth]) for n in names))
    more = ", ..." if len(prefixes) > limit else ""
    return ", ".join(prefixes[:limit]) + more if prefixes else "(none)"


def select(names: Sequence[str], patterns: Sequence[str], key: str) -> set[str]:
    """The names matched by any of ``patterns``; a pattern matching none raises
    :class:`ConfigError` naming ``key`` and the pattern."""
    chosen: set[str] = set()
    for i, pattern in enumerate(patterns):
        hit = {n for n in names if matches(n, pattern)}
        if not hit:
            raise ConfigError(
                f"config key '{key}[{i}]': pattern {pattern!r} matches no parameter; "
                f"names start with: {_known_prefixes(names)}"
            )
        chosen |= hit
    return chosen


# -- config --------------------------------------------------------------------------------
def _check_int(conf: Mapping[str, Any], key: str, prefix: str, minimum: int) -> None:
    v = conf[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(
            f"config key '{prefix}{key}': expected an integer >= {minimum}, got {v!r}"
        )


def _check_float(conf: Mapping[str, Any], key: str, prefix: str, lo: float, hi: float) -> None:
    v = conf[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(
            f"config key '{prefix}{key}': expected a number in [{lo}, {hi}], got {v!r}"
        )


def _check_choice(conf: Mapping[str, Any], key: str, prefix: str, choices: Sequence[str]) -> None:
    if conf[key] not in choices:
        raise ConfigError(
            f"config key '{prefix}{key}': expected one of {', '.join(choices)}, got {conf[key]!r}"
        )


def _group_config(entry: Any, key: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"config key {key!r}: expected a mapping, got {entry!r}")
    g = merge(GROUP_DEFAULTS, entry, key + ".")
    if g["params"] is None:
        raise ConfigError(f"config key '{key}.params': required (a pattern or a list)")
    g["params"] = _pattern_list(g["params"], key + ".params")
    _check_float(g, "lr_scale", key + ".", 0.0, math.inf)
    if g["weight_decay"] is not None:
        _check_float(g, "weight_decay", key + ".", 0.0, math.inf)
    return g


def optim_config(conf: Mapping[str, Any] | None = None, prefix: str = "optim.") -> dict[str, Any]:
    """The ``optim`` section ``conf`` merged strictly onto :data:`OPTIM_DEFAULTS` and
    validated; errors are :class:`ConfigError` naming the key (under ``prefix``).

    Idempotent: an already complete section comes back equal (with groups filled in).
    """
    c = merge(OPTIM_DEFAULTS, dict(conf or {}), prefix)
    _check_choice(c, "name", prefix, OPTIMIZERS)
    _check_choice(c, "schedule", prefix, SCHEDULES)
    _check_float(c, "lr", prefix, 0.0, math.inf)
    _check_float(c, "weight_decay", prefix, 0.0, math.inf)
    _check_float(c, "momentum", prefix, 0.0, math.inf)
    _check_float(c, "gamma", prefix, 0.0, 1.0)
    _check_float(c, "min_lr_ratio", prefix, 0.0, 1.0)
    _check_int(c, "lr_decay_steps", prefix, 0)
    _check_int(c, "warmup_steps", prefix, 0)
    betas = c["betas"]
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise ConfigError(
            f"config key '{prefix}betas': expected two numbers in [0, 1), got {betas!r}"
        )
    c["groups"] = [_group_config(g, f"{prefix}groups[{i}]") for i, g in enumerate(c["groups"])]
    c["freeze"] = _pattern_list(c["freeze"], prefix + "freeze")
    return c


# -- optimiser -----------------------------------------------------------------------------
def trainable_names(
    module: nn.Module,
    conf: Mapping[str, Any] | None = None,
    trainable: Sequence[str] | None = None,
    *,
    prefix: str = "optim.",
    trainable_key: str = "trainable",
) -> list[str]:
    """Qualified names of the parameters that ``trainable`` (all when ``None`` or empty)
    selects minus those ``conf["freeze"]`` selects, in ``named_parameters()`` order."""
    c = optim_config(conf, prefix)
    names = [n for n, _ in module.named_parameters()]
    wanted = set(names)
    if trainable:
        wanted = select(names, _pattern_list(trainable, trainable_key), trainable_key)
    wanted -= select(names, c["freeze"], prefix + "freeze")
    return [n for n in names if n in wanted]


def _make_optimizer(c: Mapping[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    if c["name"] == "sgd":
        return torch.optim.SGD(groups, lr=c["lr"], momentum=c["momentum"])
    cls = torch.optim.Adam if c["name"] == "adam" else torch.optim.AdamW
    return cls(groups, lr=c["lr"], betas=tuple(c["betas"]), weight_decay=c["weight_decay"])


def _param_groups(
    named: list[tuple[str, nn.Parameter]], c: Mapping[str, Any], prefix: str
) -> list[dict[str, Any]]:
    """The default group first (no extra keys, so a plain config gives exactly the param
    group of ``torch.optim.Adam(module.parameters())``), then the configured groups; empty
    groups are left out."""
    all_names = [n for n, _ in named]
    members: list[list[nn.Parameter]] = [[] for _ in c["groups"]]
    default: list[nn.Parameter] = []
    for i, g in enumerate(c["groups"]):  # validate every pattern against the whole module
        select(all_names, g["params"], f"{prefix}groups[{i}].params")
    for name, p in named:
        if not p.requires_grad:
            continue
        index = next(
            (i for i, g in enumerate(c["groups"]) if any(matches(name, q) for q in g["params"])),
            None,
        )
        (default if index is None else members[index]).append(p)
    out: list[dict[str, Any]] = []
    if default:
        out.append({"params": default, "weight_decay": c["weight_decay"]})
    for g, params in zip(c["groups"], members, strict=True):
        if params:
            wd = c["weight_decay"] if g["weight_decay"] is None else g["weight_decay"]
            lr = c["lr"] * g["lr_scale"]
            out.append({"params": params, "lr": lr, "lr_scale": g["lr_scale"], "weight_decay": wd})
    return out


def build_optimizer(
    module: nn.Module,
    conf: Mapping[str, Any] | None = None,
    trainable: Sequence[str] | None = None,
    *,
    prefix: str = "optim.",
    trainable_key: str = "trainable",
) -> torch.optim.Optimizer:
    """The optimiser of the ``optim`` section ``conf`` (merged onto :data:`OPTIM_DEFAULTS`)
    over the trainable parameters of ``module``.

    Trainable: matched by ``trainable`` (every parameter when ``None`` or empty), minus
    ``conf["freeze"]``. Sets ``requires_grad`` on *every* parameter of ``module`` to whether
    it is trainable (frozen ones get no gradients); only trainable ones are optimised.
    Groups carry ``lr_scale`` (read by :func:`set_lr`); the default group has none (1).
    ``prefix`` and ``trainable_key`` only name the keys in error messages.

    With the default config this is ``torch.optim.Adam(module.parameters(), lr=lr,
    weight_decay=weight_decay)``: one param group, same parameters in the same order.
    """
    c = optim_config(conf, prefix)
    keep = set(trainable_names(module, c, trainable, prefix=prefix, trainable_key=trainable_key))
    named = list(module.named_parameters())
    for name, p in named:
        p.requires_grad_(name in keep)
        if name not in keep:
            p.grad = None  # no stale gradient from an earlier stage (grad clipping, logging)
    groups = _param_groups(named, c, prefix)
    if not groups:
        raise ConfigError(
            f"config keys {trainable_key!r} / '{prefix}freeze': no trainable parameter left"
        )
    return _make_optimizer(c, groups)


# -- learning rate -------------------------------------------------------------------------
def _cosine(c: Mapping[str, Any], s: int, length: int | None) -> float:
    if not length or length <= 0:
        raise ConfigError(
            "config key 'optim.lr_decay_steps': the cosine schedule needs lr_decay_steps > 0 "
            "or a stage end longer than warmup_steps"
        )
    t = min(s, length) / length
    floor = c["lr"] * c["min_lr_ratio"]
    return floor + (c["lr"] - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def lr_at(
    step: int,
    conf: Mapping[str, Any] | None = None,
    stage_start: int = 0,
    stage_end: int | None = None,
) -> float:
    """The base learning rate (of the default group) before global step ``step``.

    The schedule counts ``s = step - stage_start`` (steps since the stage started): linear
    warm-up for ``s < warmup_steps``, then ``schedule`` on ``s - warmup_steps``. Cosine with
    ``lr_decay_steps`` 0 decays until ``stage_end`` (required then). With the defaults,
    ``lr * 0.5 ** (step // lr_decay_steps)`` exactly, or ``lr`` when ``lr_decay_steps`` is 0.
    """
    c = optim_config(conf)
    s = step - stage_start
    if s < 0:
        raise ValueError(f"step {step} is before the stage start {stage_start}")
    lr, warm = c["lr"], c["warmup_steps"]
    if s < warm:
        return lr * (s + 1) / warm
    s -= warm
    schedule, n = c["schedule"], c["lr_decay_steps"]
    if schedule == "step_halving":
        return lr * 0.5 ** (s // n) if n > 0 else lr
    if schedule == "exponential":
        return lr * c["gamma"] ** s
    if schedule == "cosine":
        length = n if n > 0 else (None if stage_end is None else stage_end - stage_start - warm)
        return _cosine(c, s, length)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr_base: float) -> None:
    """Set every group's lr to ``lr_base`` times its ``lr_scale`` (1 when absent)."""
    for g in optimizer.param_groups:
        g["lr"] = lr_base * g.get("lr_scale", 1.0)  # x * 1.0 == x: exact without groups


# -- stages --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """One training stage: global steps ``[start, end)``."""

    index: int
    name: str
    start: int
    end: int
    trainable: tuple[str, ...] = ()  # empty: everything
    freeze: tuple[str, ...] = ()
    loss: dict[str, Any] = field(default_factory=dict)  # overrides of the loss section
    optim: dict[str, Any] = field(default_factory=dict)  # overrides of the optim section

    @property
    def steps(self) -> int:
        return self.end - self.start

    @property
    def key(self) -> str:
        """Config path of this stage, for error messages: ``train.stages[<i>]``."""
        return f"train.stages[{self.index}]"

    def contains(self, step: int) -> bool:
        return self.start <= step < self.end


def _stage_entry(entry: Any, i: int) -> dict[str, Any]:
    key = f"train.stages[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"config key {key!r}: expected a mapping, got {entry!r}")
    e = merge(STAGE_DEFAULTS, entry, key + ".")
    for k in ("loss", "optim"):
        if not isinstance(e[k], dict):
            raise ConfigError(f"config key '{key}.{k}': expected a mapping, got {e[k]!r}")
    _check_int(e, "steps", key + ".", 0)
    e["trainable"] = tuple(_pattern_list(e["trainable"], key + ".trainable"))
    e["freeze"] = tuple(_pattern_list(e["freeze"], key + ".freeze"))
    optim_config(e["optim"], key + ".optim.")  # unknown keys and bad values fail now
    e["name"] = e["name"] or f"stage{i}"
    return e


def resolve_stages(stages: Sequence[Mapping[str, Any]] | None, total_steps: int) -> list[Stage]:
    """The ``train.stages`` list as consecutive :class:`Stage` s covering ``total_steps``.

    Each entry is checked strictly against :data:`STAGE_DEFAULTS`. Only the last stage may
    have ``steps: 0`` (the remaining steps); the steps must add up to ``total_steps``
    (``train.steps``). An empty list is one stage, everything trainable.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(
            f"config key 'train.steps': expected an integer >= 1, got {total_steps!r}"
        )
    if not stages:
        return [Stage(index=0, name="stage0", start=0, end=total_steps)]
    if not isinstance(stages, (list, tuple)):
        raise ConfigError(f"config key 'train.stages': expected a list, got {stages!r}")
    entries = [_stage_entry(e, i) for i, e in enumerate(stages)]
    _check_stage_names(entries)
    out, start = [], 0
    for i, e in enumerate(entries):
        steps = e["steps"]
        if steps == 0:
            if i != len(entries) - 1:
                raise ConfigError(
                    f"config key 'train.stages[{i}].steps': must be >= 1 (0 only on the last "
                    "stage, meaning the remaining steps)"
                )
            steps = total_steps - start
        end = start + steps
        if steps < 1 or end > total_steps:
            raise ConfigError(
                f"config key 'train.stages[{i}].steps': stages end at step {end}, "
                f"beyond train.steps = {total_steps}"
            )
        out.append(
            Stage(i, e["name"], start, end, e["trainable"], e["freeze"], e["loss"], e["optim"])
        )
        start = end
    if start != total_steps:
        raise ConfigError(
            f"config key 'train.stages': stages cover {start} steps but train.steps is "
            f"{total_steps} (give the last stage steps: 0 to take the rest)"
        )
    return out


def _check_stage_names(entries: Iterable[Mapping[str, Any]]) -> None:
    seen: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e["name"] in seen:
            raise ConfigError(
                f"config key 'train.stages[{i}].name': {e['name']!r} already names "
                f"train.stages[{seen[e['name']]}]"
            )
        seen[e["name"]] = i


def stage_at(stages: Sequence[Stage], step: int) -> tuple[int, Stage]:
    """``(index, stage)`` of the stage global ``step`` belongs to (steps ``start <= step <
    end``); ``step == end`` of the last stage (training finished) gives the last stage."""
    if not stages:
        raise ValueError("no stages (use resolve_stages)")
    if step < 0:
        raise ValueError(f"step {step} is negative")
    for i, stage in enumerate(stages):
        if stage.contains(step):
            return i, stage
    if step == stages[-1].end:
        return len(stages) - 1, stages[-1]
    raise ValueError(f"step {step} is beyond the last stage (which ends at {stages[-1].end})")


def stage_optim(optim_conf: Mapping[str, Any] | None, stage: Stage) -> dict[str, Any]:
    """The ``optim`` section in force during ``stage``: ``optim_conf`` updated by the
    stage's ``optim`` overrides (strictly, errors name ``train.stages[i].optim.<key>``),
    with the stage's ``freeze`` patterns appended to ``freeze``."""
    base = optim_config(optim_conf)
    c = optim_config(merge(base, stage.optim, f"{stage.key}.optim."), f"{stage.key}.optim.")
    c["freeze"] = [*c["freeze"], *(p for p in stage.freeze if p not in c["freeze"])]
    return c


def stage_loss(loss_conf: Mapping[str, Any], stage: Stage) -> dict[str, Any]:
    """The (complete) ``loss`` section updated by the stage's ``loss`` overrides; an unknown
    key raises :class:`ConfigError` naming ``train.stages[i].loss.<key>``."""
    return merge(dict(loss_conf), stage.loss, f"{stage.key}.loss.")


def build_stage_optimizer(
    module: nn.Module, optim_conf: Mapping[str, Any] | None, stage: Stage
) -> torch.optim.Optimizer:
    """:func:`build_optimizer` for ``stage``: its trainable patterns, its freeze patterns on
    top of the (stage-overridden) ``optim.freeze``, its optim overrides."""
    base = optim_config(optim_conf)
    names = [n for n, _ in module.named_parameters()]
    # check the patterns of the optim section and of the stage first, so that an error names
    # the key where the pattern was written; what is left can only come from stage.optim
    for i, g in enumerate(base["groups"]):
        select(names, g["params"], f"optim.groups[{i}].params")
    select(names, base["freeze"], "optim.freeze")
    select(names, stage.freeze, f"{stage.key}.freeze")
    return build_optimizer(
        module,
        stage_optim(base, stage),
        stage.trainable,
        prefix=f"{stage.key}.optim.",
        trainable_key=f"{stage.key}.trainable",
    )


# -- initialisation from another checkpoint --------------------------------------------
def init_from_checkpoint(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    prefixes: Sequence[str] | None = None,
    strict: bool = True,
) -> list[str]:
    """Copy the entries of ``state_dict`` (another run's *model* state dict) whose keys
    match ``prefixes`` (patterns as above; ``None`` or empty: all keys) into ``module``.

    ``strict``: a selected key that ``module`` lacks, a shape mismatch (the message names
    the key and both shapes), or a key of ``module`` under ``prefixes`` missing from
    ``state_dict`` raises :class:`ConfigError` before anything is copied. Not strict: those
    keys are skipped with a :class:`UserWarning` listing them. A prefix matching no key of
    ``state_dict`` is always an error. Returns the loaded keys, in ``state_dict`` order.
    """
    source = list(state_dict)
    prefixes = _pattern_list(prefixes or [], "prefixes")
    chosen = select(source, prefixes, "prefixes") if prefixes else set(source)
    target = module.state_dict()
    problems = _init_problems(state_dict, target, chosen, prefixes)
    if problems and strict:
        raise ConfigError("init_from_checkpoint: " + "; ".join(problems))
    if problems:
        warnings.warn("init_from_checkpoint skipped: " + "; ".join(problems), stacklevel=2)
    load = [k for k in source if k in chosen and _compatible(state_dict[k], target.get(k))]
    if not load:
        raise ConfigError("init_from_checkpoint: no key of the checkpoint could be loaded")
    module.load_state_dict({k: state_dict[k] for k in load}, strict=False)
    return load


def _compatible(value: Any, target: torch.Tensor | None) -> bool:
    return target is not None and tuple(getattr(value, "shape", ())) == tuple(target.shape)


def _init_problems(
    source: Mapping[str, Any],
    target: Mapping[str, torch.Tensor],
    chosen: set[str],
    prefixes: Sequence[str] | None,
) -> list[str]:
    problems = []
    for k in (k for k in source if k in chosen):
        if k not in target:
            problems.append(f"{k!r} is not a key of the model")
        elif not _compatible(source[k], target[k]):
            shape = tuple(getattr(source[k], "shape", ()))
            problems.append(
                f"{k!r} has shape {shape} in the checkpoint, {tuple(target[k].shape)} in the model"
            )
    wanted = [k for k in target if not prefixes or any(matches(k, p) for p in prefixes)]
    problems += [f"{k!r} is missing from the checkpoint" for k in wanted if k not in source]
    return problems
