"""Configurable optimisers, schedules, parameter groups, freezing, stages and warm starts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from keypointlab.config import ConfigError
from keypointlab.training.optim import (
    OPTIM_DEFAULTS,
    Stage,
    build_optimizer,
    build_stage_optimizer,
    init_from_checkpoint,
    lr_at,
    matches,
    optim_config,
    resolve_stages,
    set_lr,
    stage_at,
    stage_loss,
    stage_optim,
)


class Toy(nn.Module):
    """A backbone with batch norm (buffers) and two heads."""

    def __init__(self, desc_dim: int = 8) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.detector = nn.Conv2d(4, 1, 1)
        self.descriptor = nn.Conv2d(4, desc_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        return self.detector(f).pow(2).mean() + self.descriptor(f).sin().mean()


def toy(seed: int = 0, **kwargs) -> Toy:
    torch.manual_seed(seed)
    return Toy(**kwargs)


def batches(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return [torch.randn(2, 1, 9, 9, generator=g) for _ in range(n)]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, lr_of=None) -> None:
    for step, x in enumerate(batches(steps)):
        if lr_of is not None:
            lr_of(opt, step)
        opt.zero_grad(set_to_none=True)
        model(x).backward()
        opt.step()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def ids(opt: torch.optim.Optimizer) -> list[list[int]]:
    return [[id(p) for p in g["params"]] for g in opt.param_groups]


# -- default equivalence ------------------------------------------------------------------
@pytest.mark.parametrize("wd, decay", [(0.0, 0), (0.01, 2)])
def test_default_is_plain_adam_bitwise(wd: float, decay: int) -> None:
    lr = 0.003
    ref, ours = toy(), toy()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=lr, weight_decay=wd)
    conf = {"lr": lr, "weight_decay": wd, "lr_decay_steps": decay}
    opt = build_optimizer(ours, conf)

    assert type(opt) is torch.optim.Adam
    assert ids(opt) == [[id(p) for p in ours.parameters()]]
    assert opt.state_dict()["param_groups"] == ref_opt.state_dict()["param_groups"]

    def trainer_lr(o, step):  # what keypointlab.training.trainer does today
        if decay > 0:
            for g in o.param_groups:
                g["lr"] = lr * 0.5 ** (step // decay)

    train(ref, ref_opt, 3, trainer_lr)
    train(ours, opt, 3, lambda o, step: set_lr(o, lr_at(step, conf)))
    for (name, a), b in zip(ref.named_parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(snapshot(ref)["detector.weight"], toy().detector.weight)
    assert opt.state_dict()["param_groups"] == ref_opt.state_dict()["param_groups"]


def test_default_config_sets_requires_grad_and_is_idempotent() -> None:
    model = toy()
    for p in model.parameters():
        p.requires_grad_(False)
    build_optimizer(model)
    assert all(p.requires_grad for p in model.parameters())
    full = optim_config({"lr": 0.01})
    assert optim_config(full) == full
    assert optim_config() == OPTIM_DEFAULTS


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_other_optimizers(name: str, cls: type) -> None:
    opt = build_optimizer(toy(), {"name": name, "momentum": 0.5, "betas": [0.8, 0.99]})
    assert type(opt) is cls
    g = opt.param_groups[0]
    if name == "sgd":
        assert g["momentum"] == 0.5
    else:
        assert g["betas"] == (0.8, 0.99)


# -- groups and freezing -------------------------------------------------------------------
def test_groups_get_their_lr_scale_and_weight_decay() -> None:
    model = toy()
    conf = {
        "lr": 0.01,
        "weight_decay": 0.1,
        "groups": [
            {"params": "detector", "lr_scale": 0.1},  # first match wins for detector.bias
            {"params": ["*.bias"], "lr_scale": 2, "weight_decay": 0.0},
        ],
    }
    opt = build_optimizer(model, conf)
    p = dict(model.named_parameters())
    expected = [
        ["backbone.0.weight", "backbone.1.weight", "descriptor.weight"],
        ["detector.weight", "detector.bias"],
        ["backbone.0.bias", "backbone.1.bias", "descriptor.bias"],
    ]
    assert ids(opt) == [[id(p[n]) for n in names] for names in expected]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.001, 0.02])
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.0]
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05, 1.0])
    train(model, opt, 2)  # the groups really step


def test_group_covering_everything_drops_the_empty_default_group() -> None:
    opt = build_optimizer(toy(), {"groups": [{"params": "*", "lr_scale": 0.5}]})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr_scale"] == 0.5


def test_freeze_keeps_params_unchanged_and_out_of_optimizer() -> None:
    model = toy()
    before = snapshot(model)
    opt = build_optimizer(model, {"lr": 0.01, "freeze": ["backbone"]})
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        frozen = name.startswith("backbone.")
        assert p.requires_grad is not frozen, name
        assert (id(p) in in_opt) is not frozen, name
    train(model, opt, 3)
    for name, p in model.named_parameters():
        same = torch.equal(p, before[name])
        assert same is name.startswith("backbone."), name
        if name.startswith("backbone."):
            assert p.grad is None, name


def test_trainable_minus_freeze_and_unfreezing_again() -> None:
    model = toy()
    opt = build_optimizer(model, {"freeze": ["detector.bias"]}, trainable=["detector"])
    assert ids(opt) == [[id(model.detector.weight)]]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["detector.weight"]
    model(batches(1)[0]).backward()
    build_optimizer(model)  # a later stage: everything trainable, stale grads cleared
    assert all(p.requires_grad for p in model.parameters())
    assert model.descriptor.weight.grad is None and model.detector.weight.grad is not None


def test_pattern_semantics() -> None:
    assert matches("backbone.0.weight", "backbone")
    assert matches("backbone", "backbone")
    assert not matches("backbone2.weight", "backbone")
    assert not matches("model.backbone.w", "backbone")
    assert matches("backbone.0.bias", "*.bias")
    assert matches("blocks.3.norm.weight", "blocks.*.norm")
    assert matches("descriptor.weight", "desc*")


@pytest.mark.parametrize(
    "conf, trainable, key",
    [
        ({"freeze": ["detector", "backbnoe"]}, None, "optim.freeze[1]"),
        ({"groups": [{"params": ["detector", "head"]}]}, None, "optim.groups[0].params[1]"),
        ({}, ["descriptr*"], "trainable[0]"),
    ],
)
def test_unknown_patterns_error_naming_key_and_pattern(conf, trainable, key) -> None:
    with pytest.raises(ConfigError) as err:
        build_optimizer(toy(), conf, trainable)
    bad = {"optim.freeze[1]": "backbnoe", "trainable[0]": "descriptr*"}.get(key, "head")
    assert key in str(err.value) and repr(bad) in str(err.value)
    assert "backbone.0" in str(err.value)  # lists the names that exist


def test_nothing_trainable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no trainable parameter"):
        build_optimizer(toy(), {"freeze": ["detector"]}, trainable=["detector"])


@pytest.mark.parametrize(
    "conf, key",
    [
        ({"lrr": 0.1}, "optim.lrr"),
        ({"name": "adm"}, "optim.name"),
        ({"schedule": "cosin"}, "optim.schedule"),
        ({"lr_decay_steps": -1}, "optim.lr_decay_steps"),
        ({"warmup_steps": 1.5}, "optim.warmup_steps"),
        ({"betas": [0.9]}, "optim.betas"),
        ({"min_lr_ratio": 2.0}, "optim.min_lr_ratio"),
        ({"freeze": "backbone"}, "optim.freeze"),
        ({"freeze": [""]}, "optim.freeze[0]"),
        ({"groups": [{"params": "detector", "scale": 2.0}]}, "optim.groups[0].scale"),
        ({"groups": [{"lr_scale": 2.0}]}, "optim.groups[0].params"),
        ({"groups": [{"params": "detector", "lr_scale": "x"}]}, "optim.groups[0].lr_scale"),
        ({"groups": ["detector"]}, "optim.groups[0]"),
    ],
)
def test_config_errors_name_the_key(conf: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        optim_config(conf)
    assert repr(key) in str(err.value)


# -- schedules -----------------------------------------------------------------------------
def test_step_halving_is_exactly_the_trainer_formula() -> None:
    for lr, n in [(0.001, 7), (0.003, 1), (1e-4, 500)]:
        conf = {"lr": lr, "lr_decay_steps": n}
        for step in range(0, 2000, 3):
            assert lr_at(step, conf) == lr * 0.5 ** (step // n)
    for step in (0, 1, 10_000):
        assert lr_at(step, {"lr": 0.003}) == 0.003
        assert lr_at(step, {"lr": 0.003, "schedule": "constant", "lr_decay_steps": 2}) == 0.003


def test_schedule_counts_from_stage_start() -> None:
    conf = {"lr": 0.01, "lr_decay_steps": 10}
    assert lr_at(100, conf, stage_start=100) == 0.01
    assert lr_at(115, conf, stage_start=100) == 0.005
    with pytest.raises(ValueError, match="before the stage start"):
        lr_at(99, conf, stage_start=100)


def test_linear_warmup() -> None:
    conf = {"lr": 0.01, "warmup_steps": 4, "lr_decay_steps": 10}
    lrs = [lr_at(s, conf) for s in range(6)]
    assert lrs[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])
    assert lrs[4:] == [0.01, 0.01]
    assert lr_at(4 + 10, conf) == 0.005  # halving counted from the end of warm-up
    assert lr_at(20, conf, stage_start=20) == pytest.approx(0.0025)


def test_cosine_endpoints() -> None:
    conf = {"lr": 0.01, "schedule": "cosine", "min_lr_ratio": 0.1}
    assert lr_at(0, conf, 0, 100) == pytest.approx(0.01)
    assert lr_at(50, conf, 0, 100) == pytest.approx(0.0055)
    assert lr_at(100, conf, 0, 100) == pytest.approx(0.001)
    assert lr_at(200, {**conf, "lr_decay_steps": 100}) == pytest.approx(0.001)  # floor
    lrs = [lr_at(s, conf, 0, 100) for s in range(101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    warm = {**conf, "warmup_steps": 10}
    assert lr_at(10, warm, 0, 110) == pytest.approx(0.01)
    assert lr_at(110, warm, 0, 110) == pytest.approx(0.001)
    assert lr_at(1060, warm, 1000, 1110) == pytest.approx(0.0055)
    with pytest.raises(ConfigError, match="lr_decay_steps"):
        lr_at(5, conf)  # neither lr_decay_steps nor a stage end


def test_exponential() -> None:
    conf = {"lr": 0.01, "schedule": "exponential", "gamma": 0.9}
    assert [lr_at(s, conf) for s in range(3)] == pytest.approx([0.01, 0.009, 0.0081])


# -- stages --------------------------------------------------------------------------------
def test_no_stages_is_one_stage_over_all_steps() -> None:
    (stage,) = resolve_stages([], 50)
    assert (stage.index, stage.name, stage.start, stage.end) == (0, "stage0", 0, 50)
    assert stage.trainable == () and stage.freeze == () and stage.loss == {} == stage.optim
    assert resolve_stages(None, 50) == [stage]


def lift_stages(total: int = 100) -> list[Stage]:
    return resolve_stages(
        [
            {"name": "descriptor", "steps": 10, "trainable": ["descriptor"]},
            {"steps": 20, "trainable": ["detector"], "optim": {"lr": 0.01}, "loss": {"w": 2}},
            {"name": "joint", "steps": 0, "freeze": ["backbone"]},
        ],
        total,
    )


def test_resolve_stages_and_stage_at_boundaries() -> None:
    stages = lift_stages()
    assert [(s.name, s.start, s.end, s.steps) for s in stages] == [
        ("descriptor", 0, 10, 10),
        ("stage1", 10, 30, 20),
        ("joint", 30, 100, 70),
    ]
    assert stages[1].optim == {"lr": 0.01} and stages[1].loss == {"w": 2}
    assert stages[2].freeze == ("backbone",)
    cases = {0: 0, 9: 0, 10: 1, 29: 1, 30: 2, 99: 2, 100: 2}
    for step, index in cases.items():
        i, stage = stage_at(stages, step)
        assert i == index == stage.index, step
    for step in (-1, 101):
        with pytest.raises(ValueError):
            stage_at(stages, step)


@pytest.mark.parametrize(
    "stages, key",
    [
        ([{"steps": 10, "trainabel": ["x"]}], "train.stages[0].trainabel"),
        ([{"steps": 10}, {"steps": 5, "lr": 0.1}], "train.stages[1].lr"),
        ([{"steps": "10"}], "train.stages[0].steps"),
        ([{"steps": 0}, {"steps": 10}], "train.stages[0].steps"),
        ([{"steps": 60}, {"steps": 60}], "train.stages[1].steps"),
        ([{"steps": 60}, {"steps": 30}], "train.stages"),
        ([{"steps": 100}, {"steps": 0}], "train.stages[1].steps"),
        ([{"steps": 10, "trainable": "detector"}], "train.stages[0].trainable"),
        ([{"steps": 10, "freeze": [3]}], "train.stages[0].freeze[0]"),
        ([{"steps": 10, "optim": {"lr_sclae": 2}}], "train.stages[0].optim.lr_sclae"),
        ([{"steps": 10, "optim": {"name": "rmsprop"}}], "train.stages[0].optim.name"),
        ([{"steps": 10, "loss": 3}], "train.stages[0].loss"),
        ([{"name": "a", "steps": 10}, {"name": "a", "steps": 0}], "train.stages[1].name"),
        (["descriptor"], "train.stages[0]"),
    ],
)
def test_stage_errors_name_the_key(stages: list, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_stages(stages, 100)
    assert repr(key) in str(err.value)


def test_stage_optim_and_loss_overrides() -> None:
    stages = lift_stages()
    base = {"lr": 0.001, "lr_decay_steps": 5, "freeze": ["detector.bias"]}
    c = stage_optim(base, stages[1])
    assert c["lr"] == 0.01 and c["lr_decay_steps"] == 5
    assert stage_optim(base, stages[2])["freeze"] == ["detector.bias", "backbone"]
    assert lr_at(15, c, stages[1].start) == 0.005
    assert stage_loss({"w": 1, "margin": 0.2}, stages[1]) == {"w": 2, "margin": 0.2}
    with pytest.raises(ConfigError, match="'train.stages\\[1\\].loss.w'"):
        stage_loss({"margin": 0.2}, stages[1])


def test_stage_optimizers_switch_trainable_parts() -> None:
    model = toy()
    stages = lift_stages()
    optim = {"lr": 0.001}
    first = build_stage_optimizer(model, optim, stages[0])
    assert ids(first) == [[id(model.descriptor.weight), id(model.descriptor.bias)]]
    before = snapshot(model)
    train(model, first, 2)
    after = snapshot(model)
    assert [n for n in after if not torch.equal(after[n], before[n])] == [
        "descriptor.weight",
        "descriptor.bias",
    ]
    second = build_stage_optimizer(model, optim, stages[1])
    assert ids(second) == [[id(model.detector.weight), id(model.detector.bias)]]
    assert second.param_groups[0]["lr"] == 0.01
    third = build_stage_optimizer(model, optim, stages[2])
    assert sum(len(g) for g in ids(third)) == 4  # both heads, backbone frozen
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_stage_pattern_errors_name_the_stage_key() -> None:
    bad_trainable = resolve_stages([{"steps": 10, "trainable": ["detektor"]}], 10)[0]
    with pytest.raises(ConfigError, match=r"'train.stages\[0\].trainable\[0\]'.*'detektor'"):
        build_stage_optimizer(toy(), {}, bad_trainable)
    bad_freeze = resolve_stages([{"steps": 10, "freeze": ["bakbone"]}], 10)[0]
    with pytest.raises(ConfigError, match=r"'train.stages\[0\].freeze\[0\]'.*'bakbone'"):
        build_stage_optimizer(toy(), {}, bad_freeze)
    with pytest.raises(ConfigError, match=r"'optim.freeze\[0\]'"):
        build_stage_optimizer(toy(), {"freeze": ["nope"]}, bad_freeze)
    bad_group = resolve_stages([{"steps": 10, "optim": {"groups": [{"params": "x"}]}}], 10)[0]
    with pytest.raises(ConfigError, match=r"'train.stages\[0\].optim.groups\[0\].params\[0\]'"):
        build_stage_optimizer(toy(), {}, bad_group)


# -- init from checkpoint ------------------------------------------------------------------
def test_init_from_checkpoint_with_prefixes() -> None:
    source = toy(seed=1)
    source.train()
    source(batches(1)[0])  # non-trivial batch-norm statistics
    model = toy(seed=0)
    untouched = copy.deepcopy(model.state_dict())
    loaded = init_from_checkpoint(model, source.state_dict(), ["backbone", "detector.weight"])
    assert loaded == [
        k for k in source.state_dict() if k.startswith("backbone.") or k == "detector.weight"
    ]
    assert "backbone.1.running_mean" in loaded
    state, src = model.state_dict(), source.state_dict()
    for k in state:
        expected = src[k] if k in loaded else untouched[k]
        assert torch.equal(state[k], expected), k


def test_init_from_checkpoint_everything() -> None:
    source, model = toy(seed=1), toy(seed=0)
    loaded = init_from_checkpoint(model, source.state_dict(), None, strict=True)
    assert loaded == list(source.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k


def test_init_from_checkpoint_shape_mismatch() -> None:
    source, model = toy(seed=1, desc_dim=16), toy(seed=0)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"'descriptor.weight' has shape \(16, 4, 1, 1\)"):
        init_from_checkpoint(model, source.state_dict(), None, strict=True)
    for k, v in model.state_dict().items():  # nothing copied on error
        assert torch.equal(v, before[k]), k
    with pytest.warns(UserWarning, match="descriptor.bias"):
        loaded = init_from_checkpoint(model, source.state_dict(), None, strict=False)
    assert "descriptor.weight" not in loaded and "detector.weight" in loaded
    assert torch.equal(model.detector.weight, source.detector.weight)
    assert torch.equal(model.descriptor.weight, before["descriptor.weight"])


def test_init_from_checkpoint_missing_and_unknown() -> None:
    source = {k: v for k, v in toy(seed=1).state_dict().items() if k != "detector.bias"}
    with pytest.raises(ConfigError, match="'detector.bias' is missing from the checkpoint"):
        init_from_checkpoint(toy(), source, ["detector"], strict=True)
    assert init_from_checkpoint(toy(), source, ["backbone"], strict=True)  # bias not asked for
    with pytest.raises(ConfigError, match=r"'prefixes\[0\]'.*'backbon'"):
        init_from_checkpoint(toy(), source, ["backbon"], strict=False)
    extra = {**toy(seed=1).state_dict(), "head.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match="'head.weight' is not a key of the model"):
        init_from_checkpoint(toy(), extra, None, strict=True)
    with pytest.warns(UserWarning, match="'head.weight' is not a key of the model"):
        assert "head.weight" not in init_from_checkpoint(toy(), extra, None, strict=False)
