"""The trainer shared by every method: build, step, validate, checkpoint, resume.

Runs single-process on CPU or CUDA, or multi-process under ``torchrun`` with
DistributedDataParallel (gloo on CPU, nccl on CUDA). Batches are a pure function of the
sample index (see :mod:`keypointlab.data.pairs`), so a run resumed from a checkpoint
continues exactly where that checkpoint left it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from keypointlab.config import (
    ConfigError,
    check_config_tree,
    deep_update,
    load_yaml,
    merge,
    parse_overrides,
)
from keypointlab.data.pairs import IndexSampler
from keypointlab.data.sources import build_dataset
from keypointlab.devices import check_device
from keypointlab.io.checkpoint import (
    RESUME_ENTRIES,
    CheckpointError,
    CheckpointMismatchError,
    load_latest,
    save_checkpoint,
    state_dict_problems,
)
from keypointlab.models.base import METHODS, BaseModel, build_model, get_method
from keypointlab.registry import RegistryError
from keypointlab.training.optim import (
    Stage,
    build_stage_optimizer,
    init_from_checkpoint,
    lr_at,
    optim_config,
    resolve_stages,
    set_lr,
    stage_at,
    stage_loss,
    stage_optim,
)
from keypointlab.training.step import TrainStep

logger = logging.getLogger(__name__)

DEFAULT_CONFIG: dict[str, Any] = {
    "method": "kp2d",
    "model": {},  # checked by the model's own default_conf
    "loss": {},  # checked by the method's loss defaults
    "data": {
        "source": "pairs",  # pairs | synthetic | adapted_pairs | depth_pairs | instances
        "labels": "",  # adapted_pairs: HDF5 keypoints written by `keypointlab adapt`
        "train": "../shared/data/train",
        "size": [120, 160],
        "max_side": 320,
        "crop_scale": [0.6, 1.0],  # view 0's side as a fraction of the largest crop
        "render_from_source": False,  # view 1 from the source image, not from view 0
        "homography": {},  # HomographyConfig fields
        "photometric": {
            "primitives": [
                "brightness",
                "contrast",
                "gaussian_noise",
                "speckle",
                "shading",
                "motion_blur",
            ],
            "prob": 0.5,
        },
        "workers": 1,
        # fraction of data.train kept out of training for validation (a fixed split by
        # path, keypointlab.data.holdout); the validation pairs are made from it
        "holdout": 0.1,
        "holdout_seed": 0,
        # subfolders of data.train left out of training and validation (e.g. images an
        # evaluation also uses)
        "exclude": [],
    },
    "train": {
        "seed": 0,
        "batch_size": 8,
        "lr": 0.001,
        "weight_decay": 0.0,
        "steps": 5000,
        "max_minutes": 0.0,  # stop after this much training time (0: no limit)
        "lr_decay_steps": 0,  # halve the learning rate every N steps (0: never)
        "checkpoint_every": 200,
        "keep_checkpoints": 3,
        "log_every": 10,
        "validate_every": 0,  # steps between validations (0: never)
        "overfit": False,  # repeat the first batch (debugging)
        "out": "runs/train",
        "device": "cpu",
        "grad_clip": 0.0,
        # multi-stage training: a list of {name, steps, trainable, freeze, loss, optim}
        # (keypointlab.training.optim.STAGE_DEFAULTS); [] is one stage of train.steps
        "stages": [],
        "init_from": "",  # checkpoint or run folder whose weights initialise the model
        "init_prefixes": [],  # only the weights under these module names ([]: all)
    },
    # optimiser, schedule, parameter groups, frozen parts (keypointlab.training.optim);
    # train.lr, train.weight_decay and train.lr_decay_steps are its lr, weight_decay and
    # lr_decay_steps unless this section sets them
    "optim": {},
    # periodic validation (train.validate_every): "holdout" evaluates on pairs made from the
    # held-out training images, never on the evaluation sequences; a folder of sequences
    # may be named instead; the best checkpoint by `select` (higher is better) is best.pt
    "eval": {
        "data": "holdout",
        "size": [240, 320],
        "top_k": 300,
        "pairs": 60,
        "select": "matching_score",
    },
}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file (with its ``base:`` chain), then ``key=value`` overrides.

    Raises:
        ConfigError: an unknown key, a value of the wrong type, an unknown method, invalid
            YAML (naming the file or the override), a ``base:`` chain that loops.
        keypointlab.errors.LimitError: the file, or the config once YAML aliases are
            expanded, is over a limit of :mod:`keypointlab.config` (refused before it is
            built, so a "billion laughs" costs nothing).
    """
    raw = deep_update(load_yaml(path) if path else {}, parse_overrides(overrides or []))
    check_config_tree(raw, str(path) if path else "the overrides")  # file, base: and overrides
    conf = merge(DEFAULT_CONFIG, raw)
    method = _method_class(conf["method"])
    conf["model"] = merge(method.default_conf, conf["model"], "model.")
    conf["loss"] = merge(method.loss_defaults, conf["loss"], "loss.")
    t = conf["train"]
    shorthand = {"lr": t["lr"], "weight_decay": t["weight_decay"]}
    shorthand["lr_decay_steps"] = t["lr_decay_steps"]
    conf["optim"] = optim_config({**shorthand, **conf["optim"]})
    resolve_stages(t["stages"], t["steps"])  # fail now on a bad stage list
    return conf


def _method_class(name: str) -> type[BaseModel]:
    """The model class of config key ``method``; anything else is a :class:`ConfigError`."""
    try:
        method = get_method(name)
    except RegistryError as exc:
        raise ConfigError(f"config key 'method': {exc}") from exc
    if not (isinstance(method, type) and issubclass(method, BaseModel)):
        raise ConfigError(f"config key 'method': {name!r} is not a model class")
    return method


def _flatten(conf: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in conf.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _model_diff(run: dict[str, Any], here: dict[str, Any], limit: int = 3) -> str:
    """``"; the run has model.width=8, this config 16"`` for the first model keys that
    differ between a run's config and this one (``""`` when none do)."""
    a, b = _flatten(run), _flatten(here)
    keys = [k for k in sorted(a.keys() | b.keys()) if k in a and k in b and a[k] != b[k]]
    if not keys:
        return ""
    pairs = ", ".join(f"{k}={a[k]!r:.60} (this config: {b[k]!r:.60})" for k in keys[:limit])
    return f"; the run was trained with {pairs}"


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = check_device(device, "train.device")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        if dev.type == "cuda":
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(dev)
    rank, world = _dist_info()
    return rank, world, dev


def run_info(step: int, world: int) -> dict[str, Any]:
    """Provenance of a (re)start: command, git revision, versions, time."""
    import platform
    import subprocess
    import sys

    try:
        rev = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=10,
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        rev, dirty = None, None
    return {
        "start_step": step,
        # the program by name only: no path of the machine that trained
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
        "git_revision": rev,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "world_size": world,
        "threads": torch.get_num_threads(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


class Trainer:
    """Builds everything from a config and runs the loop.

    Attributes written under ``train.out``: ``config.json``, checkpoints
    ``ckpt_<step>.pt``, ``log.jsonl`` (losses), ``validation.jsonl`` (protocol metrics
    against training minutes) and TensorBoard scalars.
    """

    def __init__(self, conf: dict[str, Any], resume: bool = False, progress: bool = True) -> None:
        self.conf = conf
        t = conf["train"]
        self.rank, self.world, self.device = setup_distributed(t["device"])
        self.out = Path(t["out"])
        self.progress = progress and self.rank == 0
        torch.manual_seed(t["seed"])
        self.method_module = METHODS.module_of(conf["method"])
        model = build_model(conf["method"], conf["model"])
        if t["init_from"]:
            self._init_from(model, t["init_from"], t["init_prefixes"])
        self.step_module = TrainStep(model, conf["loss"]).to(self.device)
        self.stages = resolve_stages(t["stages"], t["steps"])
        self.step = 0
        self.train_seconds = 0.0
        self._writer = None
        self._best: float | None = None
        self._validation_dir: Path | None = None  # the held-out pairs, once written
        self._enter_stage(stage_at(self.stages, 0)[1])
        if resume:
            self._resume()

    # -- stages -----------------------------------------------------------------
    @staticmethod
    def _init_from(model: torch.nn.Module, source: str, prefixes: list[str]) -> None:
        from keypointlab.models.loading import load_run

        weights = load_run(source).model.state_dict()
        loaded = init_from_checkpoint(model, weights, prefixes or None)
        logger.info("initialised %d tensors from %s", len(loaded), source)

    def _enter_stage(self, stage: Stage) -> None:
        """Optimiser, loss config and DDP wrapper of ``stage`` (its trainable parts only)."""
        self.stage = stage
        self.stage_optim = stage_optim(self.conf["optim"], stage)
        self.optimizer = build_stage_optimizer(self.step_module.model, self.conf["optim"], stage)
        self.step_module.loss_conf = stage_loss(self.conf["loss"], stage)
        self.ddp = self.step_module
        if self.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.step_module)
        if len(self.stages) > 1:
            logger.info("stage %s from step %d to %d", stage.name, stage.start, stage.end)

    # -- build ------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        d, t = self.conf["data"], self.conf["train"]
        dataset = build_dataset(d, t["seed"], progress=self.progress)
        bs = t["batch_size"]
        if t["overfit"]:
            sampler = [i * self.world + self.rank for i in range(bs)] * t["steps"]
            sampler = sampler[self.step * bs :]
        else:
            sampler = IndexSampler(self.step * bs, t["steps"] * bs, self.rank, self.world)
        return DataLoader(
            dataset,
            batch_size=bs,
            sampler=sampler,
            num_workers=d["workers"],
            persistent_workers=False,
            generator=torch.Generator().manual_seed(t["seed"]),  # leave the global RNG alone
            drop_last=True,
        )

    # -- checkpoints ----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "method": self.conf["method"],
            "method_module": self.method_module,
            "config": json.loads(json.dumps(self.conf)),
            "model": self.step_module.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "stage": self.stage.index,
            "best_validation": self._best,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "torch_rng": torch.get_rng_state(),
        }

    def save(self) -> Path | None:
        if self.rank != 0:
            return None
        t = self.conf["train"]
        return save_checkpoint(self._state(), self.out, self.step, t["keep_checkpoints"])

    def _resume(self) -> None:
        """Continue from the newest checkpoint in ``train.out`` that loads.

        A folder without any checkpoint starts from scratch, with a warning (nothing was
        lost: there was nothing to resume). A folder whose checkpoints are all refused
        (truncated, corrupt, not KeypointLab's) is a :class:`CheckpointError` listing each
        and why: starting over would silently throw the run away, so the user decides
        (delete them, or train without ``--resume`` into another ``train.out``). A
        checkpoint of another method, or whose weights do not fit the configured model
        (another model size), is a :class:`CheckpointError` naming the run and the key.
        """
        try:
            found = load_latest(self.out, expected_method=self.conf["method"])
        except CheckpointMismatchError:
            raise
        except CheckpointError as exc:
            raise CheckpointError(
                f"{exc}. --resume stops here: delete those checkpoints, or train without "
                "--resume into another train.out, to start from scratch"
            ) from exc
        if found is None:
            logger.warning("--resume: no checkpoint in %s: starting from scratch", self.out)
            return
        self._load_state(*found)

    def _load_state(self, path: Path, state: dict[str, Any]) -> None:
        """Model, optimiser, step, time and RNG of a checked checkpoint (``load_checkpoint``)."""
        missing = [k for k in RESUME_ENTRIES if k not in state]
        if missing:
            raise CheckpointError(
                f"{path}: cannot resume from it: no {', '.join(map(repr, missing))} entries "
                "(the trainer writes them)"
            )
        problems = state_dict_problems(self.step_module.model.state_dict(), state["model"])
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckpointError(
                f"{path}: run {self.out} does not fit the configured model: {problems[0]}"
                f"{more}{_model_diff(state['config'].get('model', {}), self.conf['model'])}; "
                f"resume with the run's own settings ({self.out / 'config.json'}) or train "
                "into another train.out"
            )
        self.step_module.model.load_state_dict(state["model"])
        self.step = state["step"]
        stage = stage_at(self.stages, min(self.step, self.stages[-1].end - 1))[1]
        if state.get("stage", 0) == stage.index:  # else: a new stage starts here
            self._enter_stage(stage)
            try:
                self.optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{path}: its optimizer state does not fit the configured optimizer "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "was the optim section changed?"
                ) from exc
        self.train_seconds = float(state["train_seconds"])
        self._best = state.get("best_validation")  # best.pt is only replaced by a better one
        try:
            torch.set_rng_state(state["torch_rng"])
        except (TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: its torch_rng entry is not an RNG state") from exc
        logger.info("resumed from %s at step %d", path, self.step)

    # -- logging ----------------------------------------------------------------
    def _log(self, name: str, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / name, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                self._writer = False
        if self._writer:
            prefix = name.split(".")[0]
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._writer.add_scalar(f"{prefix}/{k}", v, record["step"])

    # -- the loop -----------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step; returns the losses and metrics as floats."""
        self.ddp.train()
        batch = {k: v.to(self.device) for k, v in batch.items()}
        self.step_module.step_index = self.step
        losses, metrics = self.ddp(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        clip = self.conf["train"]["grad_clip"]
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.step_module.parameters(), clip)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in {**losses, **metrics}.items()}

    def _adjust_lr(self) -> None:
        """Enter the stage of the coming step if it is a new one, and set its lr."""
        if not self.stage.contains(self.step):
            self._enter_stage(stage_at(self.stages, self.step)[1])
        st = self.stage
        set_lr(self.optimizer, lr_at(self.step, self.stage_optim, st.start, st.end))

    def validate(self) -> dict[str, Any]:
        """Protocol metrics of the current model on the validation pairs (rank 0 only);
        keeps the best checkpoint of the last stage by ``eval.select`` as ``best.pt``."""
        from keypointlab.data.sequences import load_dataset
        from keypointlab.evaluation.benchmark import evaluate_features
        from keypointlab.features.learned import LearnedExtractor

        e = self.conf["eval"]
        sequences, _ = load_dataset(self._validation_data())
        model = self.step_module.model
        extractor = LearnedExtractor(model, self.conf["method"], device=self.device)
        result = evaluate_features(
            extractor, sequences, tuple(e["size"]), e["top_k"], progress=False
        )
        model.train()
        s = result.summary()
        record = {
            "step": self.step,
            "train_minutes": self.train_seconds / 60,
            **{k: v for k, v in s.items() if k != "mma"},
        }
        value = record.get(e["select"])
        # a model is whole only in the last stage (LIFT's detector is untrained before it),
        # so best.pt is chosen among the last stage's validations
        final = self.stage.index == len(self.stages) - 1
        record["stage"] = self.stage.name
        if final and value is not None and (self._best is None or value > self._best):
            self._best = value
            record["best"] = True
            save_checkpoint(self._state(), self.out, self.step, keep=0, name="best.pt")
        self._log("validation.jsonl", record)
        return record

    def _validation_data(self) -> Path:
        """The folder of validation sequences: ``eval.data``, or for ``holdout`` pairs
        made (once) from the held-out training images under ``<train.out>/validation``."""
        from keypointlab.data.holdout import build_validation_benchmark, holdout_paths

        e, d = self.conf["eval"], self.conf["data"]
        if e["data"] != "holdout":
            return Path(e["data"])
        if self._validation_dir is not None:
            return self._validation_dir
        if not d["holdout"]:
            raise ValueError("eval.data 'holdout' needs data.holdout > 0 (a held-out fraction)")
        held_out = holdout_paths(d["train"], d["holdout"], d["holdout_seed"], d["exclude"])[1]
        if not held_out:
            raise ValueError(f"{d['train']}: data.holdout={d['holdout']} holds out no image")
        self._validation_dir = build_validation_benchmark(
            held_out,
            Path(d["train"]),
            self.out / "validation",
            size=tuple(e["size"]),
            seed=d["holdout_seed"],
            max_images=e["pairs"],
        )
        return self._validation_dir

    def _time_is_up(self) -> bool:
        """``train.max_minutes`` reached (decided by rank 0 for every rank)."""
        limit = self.conf["train"]["max_minutes"]
        up = torch.tensor(
            float(bool(limit) and self.train_seconds >= 60 * limit), device=self.device
        )
        if self.world > 1:
            dist.broadcast(up, src=0)
        return bool(up.item())

    def fit(self) -> dict[str, Any]:
        """Train until ``train.steps`` or ``train.max_minutes``; returns the last log record."""
        t = self.conf["train"]
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.conf, indent=1))
            with open(self.out / "runs.jsonl", "a") as f:  # one line per (re)start
                f.write(json.dumps(run_info(self.step, self.world)) + "\n")
        loader = self._loader()
        bar = tqdm(
            total=t["steps"], initial=self.step, desc=self.conf["method"], disable=not self.progress
        )
        record: dict[str, Any] = {}
        for batch in loader:
            self._adjust_lr()
            start = time.perf_counter()
            values = self.train_step(batch)
            self.train_seconds += time.perf_counter() - start
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.3f}")
            record = {"step": self.step, "train_minutes": self.train_seconds / 60, **values}
            if self.step % t["log_every"] == 0:
                self._log("log.jsonl", record)
            if self.step % t["checkpoint_every"] == 0:
                self.save()
            if t["validate_every"] and self.step % t["validate_every"] == 0 and self.rank == 0:
                logger.info("validation at step %d: %s", self.step, self.validate())
            if self._time_is_up():
                break
        bar.close()
        self.save()
        if self._writer:
            self._writer.close()
        return record


def train(
    config_path: str | Path | None,
    overrides: list[str] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load a config, train, and return the last log record (``keypointlab train``)."""
    conf = load_config(config_path, overrides)
    trainer = Trainer(conf, resume=resume, progress=progress)
    try:
        return trainer.fit()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
