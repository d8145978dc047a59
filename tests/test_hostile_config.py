"""Hostile configs, overrides and checkpoints (issue 22, part B).

Each case through the Python API (exception type and message) and through
``keypointlab.cli.main`` (exit status 2, one ``keypointlab: error:`` line, no traceback),
plus hypothesis fuzz tests over the config parser and the override parser.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keypointlab import config as config_module
from keypointlab.cli import main
from keypointlab.config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    ConfigError,
    load_yaml,
    parse_config_text,
    parse_overrides,
)
from keypointlab.errors import InputError, LimitError
from keypointlab.io.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from keypointlab.models.loading import load_run
from keypointlab.training.trainer import Trainer, load_config

CONFIG = Path(__file__).resolve().parents[1] / "keypointlab" / "configs" / "kp2d.yaml"
TINY = [
    "model.keypoint_net.channels=[8, 8, 16, 16]",
    "model.keypoint_net.descriptor_dim=16",
    "model.io_width=16",
    "loss.io_top_k=20",
    "data.size=[64, 80]",
    "data.workers=0",
    "train.batch_size=2",
    "eval.data=none",
]


def tiny(out: Path, *extra: str) -> list[str]:
    return [*TINY, f"train.out={out}", *extra]


def cli_error(capsys: pytest.CaptureFixture[str], *args: object) -> str:
    """Run the CLI; assert exit status 2 and exactly one ``keypointlab: error:`` line."""
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("keypointlab: error: "), err
    return lines[0]


def billion_laughs(levels: int = 9, width: int = 9, merge: bool = False) -> str:
    """A list-valued config key whose aliases expand to ``width ** levels`` strings."""
    if merge:  # `<<:` merge keys, which PyYAML flattens into lists while it builds
        rows = ["  l0: &l0 {a: lol, b: lol}"]
        rows += [
            f"  l{i}: &l{i} {{<<: [{', '.join([f'*l{i - 1}'] * width)}]}}" for i in range(1, levels)
        ]
        return "data:\n  homography:\n" + "\n".join("  " + r for r in rows) + "\n"
    items = [f"&l0 [{', '.join(['lol'] * width)}]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "train:\n  init_prefixes: [" + ", ".join(items) + "]\n"


@pytest.fixture
def no_building(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the YAML loader builds Python objects (the refusal must come
    before the aliases are expanded)."""

    def refuse(self, node):
        raise AssertionError("the config was built before it was measured")

    monkeypatch.setattr(config_module._BoundedLoader, "construct_document", refuse)


# -- config size -------------------------------------------------------------------------
@pytest.mark.parametrize("merge", [False, True], ids=["aliases", "merge-keys"])
def test_alias_bomb_is_refused_before_it_is_built(
    tmp_path: Path, merge: bool, no_building: None
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(billion_laughs(merge=merge))
    assert path.stat().st_size < 2000
    with pytest.raises(LimitError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "100,000 values" in msg and "MAX_CONFIG_NODES" in msg


def test_alias_bomb_via_cli_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, out = tmp_path / "bomb.yaml", tmp_path / "run"
    path.write_text(billion_laughs())
    line = cli_error(capsys, "train", path, f"train.out={out}", "--quiet")
    assert str(path) in line and "MAX_CONFIG_NODES" in line
    assert not out.exists()  # no config.json, no checkpoint


def test_long_strings_repeated_by_aliases_are_refused(tmp_path: Path, no_building) -> None:
    """Few values but much text: 6 aliases of a 200 kB string make 1.2 MB of JSON."""
    path = tmp_path / "wide.yaml"
    path.write_text(f"train:\n  init_prefixes: [&s {'x' * 200_000}, *s, *s, *s, *s, *s]\n")
    with pytest.raises(LimitError, match="MAX_CONFIG_TEXT") as err:
        load_yaml(path)
    assert str(path) in str(err.value)


def test_config_file_over_the_size_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("train:\n  steps: 3\n" + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(LimitError, match="MAX_CONFIG_BYTES") as err:
        load_config(path)
    assert str(path) in str(err.value)
    line = cli_error(capsys, "train", path, f"train.out={tmp_path / 'run'}", "--quiet")
    assert "1,000,000 bytes" in line
    with pytest.raises(LimitError, match="MAX_CONFIG_BYTES"):
        parse_overrides(["train.out=" + "x" * (MAX_CONFIG_BYTES + 1)])


def test_deep_nesting_is_a_limit_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("train:\n  init_prefixes: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(LimitError, match=f"more than {MAX_CONFIG_DEPTH} levels"):
        load_config(path)
    with pytest.raises(LimitError, match="MAX_CONFIG_DEPTH"):
        parse_overrides(["train.init_prefixes=" + "[" * 5000 + "]" * 5000])
    ok = "[" * 10 + "]" * 10  # ten levels are fine
    assert parse_overrides([f"train.init_prefixes={ok}"])["train"]["init_prefixes"]


def test_recursive_alias(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("train:\n  init_prefixes: &a [x, *a]\n")
    with pytest.raises(ConfigError, match="contains itself") as err:
        load_config(path)
    assert str(path) in str(err.value) and isinstance(err.value, InputError)
    assert "recursive YAML alias" in cli_error(capsys, "train", path)


def test_a_normal_config_is_unchanged() -> None:
    conf = load_config(CONFIG, ["train.steps=7", "data.size=[64, 80]"])
    assert conf["train"]["steps"] == 7 and conf["data"]["size"] == [64, 80]
    assert conf["method"] == "kp2d"


# -- base: chains ------------------------------------------------------------------------
def test_base_chain_that_loops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\ntrain: {steps: 1}\n")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: ./a.yaml\n")
    with pytest.raises(ConfigError, match="loops") as err:
        load_config(tmp_path / "a.yaml")
    msg = str(err.value)
    assert msg.index("a.yaml -> ") < msg.index("b.yaml -> ") < msg.index("c.yaml -> ")
    assert "'base:' chain loops" in cli_error(capsys, "train", tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="self.yaml -> .*self.yaml"):
        load_yaml(tmp_path / "self.yaml")


def test_base_that_is_not_a_file_name(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    for base in ("[b.yaml]", "1", '"\\0"'):
        path.write_text(f"base: {base}\n")
        with pytest.raises(ConfigError, match="'base'") as err:
            load_yaml(path)
        assert str(path) in str(err.value)
    path.write_text("base: /dev/zero\n")  # a device: never read
    with pytest.raises(ConfigError, match="not a regular file"):
        load_yaml(path)
    path.write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml: cannot read config"):
        load_yaml(path)


# -- overrides ---------------------------------------------------------------------------
def test_yaml_error_in_an_override_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    bad = "train.stages=[{steps: 2"
    with pytest.raises(ConfigError) as err:
        load_config(None, [bad])
    msg = str(err.value)
    assert msg.startswith(f"override {bad!r}: invalid YAML (line 1, column")
    assert "\n" not in msg
    line = cli_error(capsys, "train", CONFIG, bad)
    assert f"override {bad!r}: invalid YAML" in line
    with pytest.raises(ConfigError, match=r"override 'train.steps=!!int x': invalid YAML"):
        load_config(None, ["train.steps=!!int x"])
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_config(None, ["train.out=!!python/object:os.system x"])


def test_override_under_a_value_set_by_an_earlier_override() -> None:
    with pytest.raises(ConfigError, match="'train' is set to a value by an earlier override"):
        parse_overrides(["train=1", "train.steps=2"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train..steps=2"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides([3])  # type: ignore[list-item]


def test_wrong_types_are_still_checked(capsys: pytest.CaptureFixture[str]) -> None:
    for override, needle in [
        ("train.lr=fast", "config key 'train.lr': expected float"),
        ("train.overfit=1", "config key 'train.overfit': expected true/false"),
        ("data.size=3", "config key 'data.size': expected a list"),
        ("model=[1]", "config key 'model': expected a mapping"),
        ("optim=[1]", "config key 'optim': expected a mapping"),
        ("data.homography=7", "config key 'data.homography': expected a mapping"),
        ("method=bogus", "config key 'method': unknown method 'bogus'"),
        ("train.lr=.nan", "config key 'train.lr': NaN"),
        ("data.homography={a: 2020-01-01}", "'data.homography.a': a date value"),
        ("data.homography={on: 1}", "key True is not a string"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(CONFIG, [override])
        assert needle in str(err.value), (override, str(err.value))
        assert isinstance(err.value, KeyError) and isinstance(err.value, InputError)
        assert needle in cli_error(capsys, "train", CONFIG, override)


# -- checkpoints -------------------------------------------------------------------------
def _state(**entries) -> dict:
    return {"method": "kp2d", "model": {"w": torch.ones(2)}, "step": 1, **entries}


@pytest.mark.parametrize(
    "entries, needle",
    [
        ({"config": "not a mapping"}, "entry 'config' is a str, expected dict"),
        ({"config": {"model": [1, 2]}}, "config.model is a list, expected a mapping"),
        ({"step": "3"}, "entry 'step' is a str, expected int"),
        ({"step": True}, "entry 'step' is a bool, expected int"),
        ({"method": 7}, "entry 'method' is a int, expected str"),
        ({"model": {"w": 1}}, "entry 'model' maps 'w' to a int"),
        ({"model": [torch.ones(1)]}, "entry 'model' is a list"),
        ({"torch_rng": [1, 2]}, "entry 'torch_rng' is a list, expected Tensor"),
        ({"config": {"model": {}, "x": float("nan")}}, "NaN"),
    ],
)
def test_checkpoint_entries_of_the_wrong_type(tmp_path: Path, entries: dict, needle: str):
    path = save_checkpoint(_state(**entries), tmp_path, 1)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)
    with pytest.raises(CheckpointError, match="none of its 1 checkpoints"):
        load_run(tmp_path)


def test_checkpoint_config_bomb_is_refused(tmp_path: Path) -> None:
    """A pickle stores a shared list once: 10**9 strings in a small file."""
    bomb: list = ["lol"] * 10
    for _ in range(8):
        bomb = [bomb] * 10
    path = save_checkpoint(_state(config={"model": {}, "data": {"x": bomb}}), tmp_path, 1)
    assert path.stat().st_size < 100_000
    with pytest.raises(CheckpointError, match="MAX_CONFIG_NODES") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_checkpoint_whose_model_config_does_not_build(tmp_path: Path) -> None:
    save_checkpoint(_state(config={"model": {"bogus_key": 1}}), tmp_path, 1)
    with pytest.raises(CheckpointError, match="cannot build its model 'kp2d'.*bogus_key") as err:
        load_run(tmp_path)
    assert "ckpt_00000001.pt" in str(err.value)


def _saved_run(out: Path, *extra: str) -> Path:
    """A run folder with the checkpoint of an untrained tiny model (no training step)."""
    trainer = Trainer(load_config(CONFIG, tiny(out, *extra)), progress=False)
    path = trainer.save()
    assert path is not None
    return path


def test_resume_a_run_of_another_model_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    path = _saved_run(out)
    bigger = tiny(out, "model.keypoint_net.channels=[8, 8, 16, 32]")
    with pytest.raises(CheckpointError) as err:
        Trainer(load_config(CONFIG, bigger), resume=True, progress=False)
    msg = str(err.value)
    assert str(path) in msg and f"run {out} does not fit" in msg
    assert "in the checkpoint" in msg and "in the model" in msg  # a key and both shapes
    assert "model.keypoint_net.channels=[8, 8, 16, 16] (this config: [8, 8, 16, 32])" in msg
    line = cli_error(capsys, "train", CONFIG, *bigger, "--resume", "--quiet")
    assert "does not fit the configured model" in line
    resumed = Trainer(load_config(CONFIG, tiny(out)), resume=True, progress=False)
    assert resumed.step == 0  # the same size resumes


def test_resume_when_every_checkpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    good = _saved_run(out)
    truncated = out / "ckpt_00000002.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    torch.save({"something": "else"}, out / "ckpt_00000003.pt")
    good.write_bytes(b"not a checkpoint")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CheckpointError) as err:
        Trainer(load_config(CONFIG, tiny(out)), resume=True, progress=False)
    msg = str(err.value)
    assert "none of its 3 checkpoints can be used" in msg and "--resume stops here" in msg
    for name in (
        "ckpt_00000003.pt: not a KeypointLab",
        "ckpt_00000002.pt: cannot load",
        "ckpt_00000000.pt: cannot load",
    ):
        assert name in msg, (name, msg)
    line = cli_error(capsys, "train", CONFIG, *tiny(out), "--resume", "--quiet")
    assert "none of its 3 checkpoints" in line
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written
    with pytest.raises(CheckpointError, match="none of its 3"):
        load_latest(out)


def test_resume_checkpoint_without_training_state(tmp_path: Path) -> None:
    out = tmp_path / "run"
    state = load_checkpoint(_saved_run(out))
    del state["optimizer"], state["torch_rng"]
    save_checkpoint(state, out, 5)
    with pytest.raises(CheckpointError, match="'optimizer', 'torch_rng' entries") as err:
        Trainer(load_config(CONFIG, tiny(out)), resume=True, progress=False)
    assert "ckpt_00000005.pt: cannot resume from it" in str(err.value)


def test_resume_of_an_empty_folder_starts_fresh_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(load_config(CONFIG, tiny(out)), resume=True, progress=False)
    assert trainer.step == 0
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no checkpoint in" in r.getMessage() for r in warned)


# -- fuzz --------------------------------------------------------------------------------
# fmt: off
TOKENS = [
    "train", "data", "model", "loss", "optim", "eval", "steps", "size", "stages", "lr",
    "init_prefixes", "homography", "method", "kp2d", "base", "base: cfg.yaml",
    "base: nope.yaml", ":", ": ", " ", "\n", "  ", "- ", "[", "]", "{", "}", ",", "&a ",
    "*a", "&b ", "*b", "<<: ", "!!int ", "!!float ", "!!binary ", "!!set ", "!!timestamp ",
    "!!python/object:os.system ", "!foo ", "'", '"', "1", "-1", "1.5", "1e400", ".nan",
    ".inf", "null", "~", "on", "no", "2020-01-01", "#", "? ", "|", ">", "\t", "\x00", "é",
    "true", "x", "---\n", "...\n", "%YAML 1.1\n", "\ufeff", "\\",
]
# fmt: on
yaml_texts = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.text(max_size=200),
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _documented(exc: BaseException) -> None:
    """The only exceptions a config may raise: InputError (ConfigError, LimitError) with
    a one-line message."""
    assert isinstance(exc, InputError), repr(exc)
    assert str(exc) and "\n" not in str(exc), repr(str(exc))


@FUZZ
@given(text=st.one_of(yaml_texts, st.binary(max_size=200)))
def test_fuzz_config_files(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "replace"))
        try:
            load_config(path)
        except Exception as exc:  # noqa: BLE001 - the point of the test
            _documented(exc)
        try:
            parse_config_text(text, "text")
        except Exception as exc:  # noqa: BLE001
            _documented(exc)


# fmt: off
KEYS = ["train.steps", "train.lr", "train.stages", "train", "data.size", "model",
        "model.keypoint_net.channels", "optim", "optim.groups", "loss", "eval.top_k",
        "data.homography", "train.init_prefixes", "base", "x", "train.steps.x"]
# fmt: on


@FUZZ
@given(
    overrides=st.lists(
        st.one_of(
            st.tuples(st.sampled_from(KEYS), yaml_texts).map("=".join),
            st.text(max_size=40),
        ),
        max_size=4,
    )
)
def test_fuzz_overrides(overrides: list[str]) -> None:
    overrides = [o for o in overrides if not o.strip().startswith("method")]  # no imports
    try:
        load_config(None, overrides)
    except Exception as exc:  # noqa: BLE001 - the point of the test
        _documented(exc)
