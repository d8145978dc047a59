"""The training engine: configs, overfitting, checkpoints, exact resume, faults, torchrun."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from keypointlab.config import ConfigError
from keypointlab.data.samples import sample_photo
from keypointlab.io.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from keypointlab.training.trainer import Trainer, load_config

TINY = [
    "model.keypoint_net.channels=[8, 8, 16, 16]",
    "model.keypoint_net.descriptor_dim=16",
    "model.io_width=16",
    "loss.io_top_k=20",
    "data.size=[64, 80]",
    "data.max_side=128",
    "data.workers=0",
    "train.batch_size=2",
    "train.log_every=1",
    "eval.data=none",
]
CONFIG = Path(__file__).resolve().parents[1] / "keypointlab" / "configs" / "kp2d.yaml"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_images")
    for name in ("astronaut", "coffee", "rocket"):
        rgb = sample_photo(name, (96, 128))
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def tiny(images: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.train={images}", f"train.out={out}", *extra]


def read_log(out: Path) -> dict[int, float]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return {r["step"]: r["total"] for r in map(json.loads, lines)}


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="train.bogus"):
        load_config(CONFIG, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="loss.margn"):
        load_config(CONFIG, ["loss.margn=0.3"])
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(CONFIG, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="keypoint_net.chanels"):
        load_config(CONFIG, ["model.keypoint_net.chanels=[1]"])
    conf = load_config(CONFIG, ["train.steps=7"])
    assert conf["train"]["steps"] == 7


def test_overfit_one_batch_drives_loss_down(images: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    conf = load_config(
        CONFIG,
        tiny(
            images,
            tmp_path,
            "train.steps=40",
            "train.overfit=true",
            "train.lr=0.003",
            "model.keypoint_net.dropout=0.0",
        ),
    )
    Trainer(conf, progress=False).fit()
    log = read_log(tmp_path)
    first = sum(log[s] for s in (1, 2, 3)) / 3
    last = sum(log[s] for s in (38, 39, 40)) / 3
    assert last < 0.8 * first, (first, last)


def test_resume_continues_exactly(images: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(load_config(CONFIG, tiny(images, full, "train.steps=6")), progress=False).fit()
    conf = load_config(CONFIG, tiny(images, part, "train.steps=6", "train.checkpoint_every=3"))
    trainer = Trainer(conf, progress=False)
    trainer.conf["train"]["max_minutes"] = 1e-9  # stop right after the first step
    trainer.fit()
    assert trainer.step == 1
    # a fresh trainer resumes from the last checkpoint (step 1) and runs to step 6
    resumed = Trainer(
        load_config(CONFIG, tiny(images, part, "train.steps=6")), resume=True, progress=False
    )
    assert resumed.step == 1
    resumed.fit()
    a, b = read_log(full), read_log(part)
    for step in range(2, 7):
        assert a[step] == b[step], (step, a[step], b[step])


def test_truncated_checkpoint_falls_back(tmp_path: Path, caplog) -> None:
    state = {"method": "kp2d", "model": {"w": torch.ones(3)}, "step": 1}
    save_checkpoint(state, tmp_path, 1)
    newest = save_checkpoint({**state, "step": 2}, tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:100])
    path, loaded = load_latest(tmp_path, "kp2d")
    assert loaded["step"] == 1 and path.name == "ckpt_00000001.pt"
    assert "falling back" in caplog.text
    with pytest.raises(CheckpointMismatchError, match="unsuperpoint"):
        load_latest(tmp_path, "unsuperpoint")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_does_not_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    path = tmp_path / "ckpt_00000001.pt"
    with open(path, "wb") as f:
        pickle.dump({"method": "kp2d", "model": exploit}, f)
    torch.save({"method": "kp2d", "model": {}, "payload": exploit}, tmp_path / "evil.pt")
    for p in (path, tmp_path / "evil.pt"):
        with pytest.raises(CheckpointError):
            load_checkpoint(p)
    assert not marker.exists()


def test_checkpoint_of_other_model_is_refused(images: Path, tmp_path: Path) -> None:
    save_checkpoint(
        {"method": "kp2d", "model": {"bogus": torch.ones(1)}, "step": 1, "config": {"model": {}}},
        tmp_path,
        1,
    )
    from keypointlab.features.learned import load_learned

    with pytest.raises(ValueError, match="do not fit"):
        load_learned(tmp_path)


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "keypointlab.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kw,
    )


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(images: Path, tmp_path: Path) -> None:
    steps = "train.steps=12"
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = _cli(["train", str(CONFIG), *tiny(images, ref, steps), "--quiet"])
    assert p.wait(timeout=300) == 0, p.stdout.read().decode()
    p = _cli(
        ["train", str(CONFIG), *tiny(images, run, steps, "train.checkpoint_every=3"), "--quiet"]
    )
    deadline = time.time() + 300
    while not list(run.glob("ckpt_00000006.pt")) and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = max(int(c.stem.split("_")[1]) for c in run.glob("ckpt_*.pt"))
    assert 6 <= done < 12
    p = _cli(["train", str(CONFIG), *tiny(images, run, steps), "--resume", "--quiet"])
    assert p.wait(timeout=300) == 0, p.stdout.read().decode()
    a, b = read_log(ref), read_log(run)
    for step in range(done + 1, 13):
        assert a[step] == b[step], (step, a[step], b[step])


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo(images: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "keypointlab.cli",
        "train",
        str(CONFIG),
        *tiny(images, tmp_path, "train.steps=3", "train.checkpoint_every=3"),
        "--quiet",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ckpt_00000003.pt", "kp2d")
    assert ckpt["step"] == 3
    assert len(read_log(tmp_path)) == 3


def test_ship_records_default_scales_and_measures_both(images: Path, tmp_path: Path) -> None:
    """`ship --scales` writes the scales into the model's JSON and the card measures the
    model at those scales and at scale 1, beside SIFT and ORB."""
    from keypointlab.training.ship import ship_model

    torch.set_num_threads(1)
    run = tmp_path / "run"
    Trainer(load_config(CONFIG, tiny(images, run, "train.steps=2")), progress=False).fit()
    eval_data = tmp_path / "eval" / "v_astro"
    eval_data.mkdir(parents=True)
    ref = sample_photo("astronaut", (240, 320))
    H = np.array([[0.9, 0.05, 10], [-0.05, 0.9, 12], [0, 0, 1]])
    cv2.imwrite(str(eval_data / "1.png"), cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))
    warped = cv2.warpPerspective(ref, H, (320, 240))
    cv2.imwrite(str(eval_data / "2.png"), cv2.cvtColor(warped, cv2.COLOR_RGB2BGR))
    np.savetxt(eval_data / "H_1_2", H)
    card = ship_model(run, "tiny", tmp_path / "eval", tmp_path / "weights", scales=(1.5, 1.0))
    meta = json.loads((tmp_path / "weights" / "tiny.json").read_text())
    assert meta["scales"] == [1.5, 1.0]
    text = card.read_text()
    assert "| tiny@1.5,1 | 240x320 |" in text and "| tiny | 240x320 |" in text
    assert "| sift | 240x320 |" in text and "image scales 1.5, 1" in text


def test_ship_evaluates_first_refuses_to_overwrite_and_checks_the_name(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ship` writes nothing when the evaluation fails, keeps a shipped model unless
    forced, and takes only names that stay inside the weights folder."""
    from keypointlab.cli import main
    from keypointlab.training.ship import ship_model

    torch.set_num_threads(1)
    run, out = tmp_path / "run", tmp_path / "weights"
    Trainer(load_config(CONFIG, tiny(images, run, "train.steps=1")), progress=False).fit()
    with pytest.raises(FileNotFoundError):
        ship_model(run, "tiny", tmp_path / "no-eval-data", out)
    assert not out.exists() or not any(out.iterdir())
    eval_data = tmp_path / "eval" / "v_astro"
    eval_data.mkdir(parents=True)
    ref = sample_photo("astronaut", (120, 160))
    cv2.imwrite(str(eval_data / "1.png"), ref)
    cv2.imwrite(str(eval_data / "2.png"), ref)
    np.savetxt(eval_data / "H_1_2", np.eye(3))
    ship_model(run, "tiny", tmp_path / "eval", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="pass --force"):
        ship_model(run, "tiny", tmp_path / "eval", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    ship_model(run, "tiny", tmp_path / "eval", out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.md", "tiny.safetensors"]
    for bad in ("../evil", "a/b", ".hidden", "", "x" * 65, "-x"):
        with pytest.raises(ValueError, match="ship --name"):
            ship_model(run, bad, tmp_path / "eval", out)
    status = main(["ship", str(run), "--name", "../evil", "--eval-data", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("keypointlab: error: ship --name '../evil'")
    assert "Traceback" not in err and not (tmp_path / "evil.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["tiny.json", "tiny.md", "tiny.safetensors"]


def _six_photos(folder: Path) -> Path:
    """Six scikit-image photographs at 96x128 in ``folder`` (enough for a 0.5 hold-out)."""
    folder.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "rocket", "chelsea", "camera", "moon")):
        rgb = sample_photo(name, (96, 128))
        cv2.imwrite(str(folder / f"{i}_{name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def _with_validation(overrides: list[str]) -> list[str]:
    """The tiny overrides with validation on the held-out images, at a tiny size."""
    return [o for o in overrides if o != "eval.data=none"] + ["eval.size=[64, 96]", "eval.top_k=50"]


def test_validation_uses_held_out_training_images_only(tmp_path: Path) -> None:
    """Validation pairs come from the held-out part of data.train, which training never
    loads; the best checkpoint by validation is kept as best.pt."""
    from keypointlab.data.holdout import holdout_paths
    from keypointlab.data.pairs import load_image_cache
    from keypointlab.data.sequences import load_dataset

    torch.set_num_threads(1)
    folder = _six_photos(tmp_path / "train")
    train, held = holdout_paths(folder, 0.5)
    assert train and held and len(train) + len(held) == 6
    assert len(load_image_cache(folder, 128, progress=False, holdout=0.5)) == len(train)
    out = tmp_path / "run"
    overrides = tiny(folder, out, "train.steps=2", "train.validate_every=1", "data.holdout=0.5")
    overrides = _with_validation(overrides)
    Trainer(load_config(CONFIG, overrides), progress=False).fit()
    sequences, _ = load_dataset(out / "validation")
    assert len(sequences) == len(held)
    held_names = {p.stem for p in held}
    assert all(any(n in s.name for n in held_names) for s in sequences)
    records = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert (out / "best.pt").is_file()
    assert any(r.get("best") for r in records)
    # a resumed run remembers the best value, so a worse validation cannot replace best.pt
    resumed = Trainer(load_config(CONFIG, overrides), resume=True, progress=False)
    assert resumed._best == max(r["matching_score"] for r in records)


def test_best_checkpoint_comes_from_the_last_stage(tmp_path: Path) -> None:
    """Before the last stage the model is not whole (LIFT's detector is untrained), so a
    validation there never becomes best.pt, however good."""
    torch.set_num_threads(1)
    folder = _six_photos(tmp_path / "train")
    out = tmp_path / "run"
    stages = "train.stages=[{name: first, steps: 2}, {name: last, steps: 1}]"
    overrides = tiny(folder, out, "train.steps=3", "train.validate_every=1", "data.holdout=0.5",
                     stages)  # fmt: skip
    overrides = _with_validation(overrides)
    Trainer(load_config(CONFIG, overrides), progress=False).fit()
    records = [json.loads(line) for line in (out / "validation.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"]) for r in records] == [(1, "first"), (2, "first"), (3, "last")]
    assert [bool(r.get("best")) for r in records] == [False, False, True]
    assert load_checkpoint(out / "best.pt")["step"] == 3


def test_stages_freeze_parts_and_resume_exactly_inside_a_stage(images: Path, tmp_path: Path):
    """Stage 1 trains all but the score head, stage 2 everything; a run stopped in stage 1
    and resumed logs the same losses as an uninterrupted one."""
    torch.set_num_threads(1)
    head = "keypoint_net.score_head"
    stages = f"train.stages=[{{name: points, steps: 3, freeze: [{head}]}}, {{steps: 3}}]"
    full, part = tmp_path / "full", tmp_path / "part"
    common = ["train.steps=6", "train.checkpoint_every=3", stages]
    fresh = Trainer(load_config(CONFIG, tiny(images, full, *common)), progress=False)
    model = fresh.step_module.model
    init = {k: v.clone() for k, v in model.keypoint_net.score_head.state_dict().items()}
    fresh.fit()
    at3 = load_checkpoint(full / "ckpt_00000003.pt")["model"]
    at6 = load_checkpoint(full / "ckpt_00000006.pt")["model"]
    weights = [k for k in init if k.endswith("weight")]
    assert all(torch.equal(at3[f"{head}.{k}"], init[k]) for k in weights)
    assert any(not torch.equal(at6[f"{head}.{k}"], init[k]) for k in weights)
    assert not torch.equal(at3["keypoint_net.desc_d.weight"], at6["keypoint_net.desc_d.weight"])

    trainer = Trainer(load_config(CONFIG, tiny(images, part, *common)), progress=False)
    trainer.conf["train"]["max_minutes"] = 1e-9  # stop right after the first step
    trainer.fit()
    assert trainer.step == 1
    resumed = Trainer(load_config(CONFIG, tiny(images, part, *common)), resume=True, progress=False)
    assert resumed.step == 1 and resumed.stage.name == "points"
    resumed.fit()
    assert read_log(part) == read_log(full)


def test_bad_stage_lists_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.stages\[0\]"):
        load_config(CONFIG, ["train.stages=[{steps: 2, traniable: [io_net]}]"])


def test_ship_card_names_a_checkpoint_that_is_not_the_runs_best(tmp_path):
    """A card must not call a hand-picked checkpoint the run's best on validation."""
    from keypointlab.training.ship import _selection, _threads

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 500, "matching_score": 0.16}, {"step": 4500, "matching_score": 0.14}]
    (run / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    conf = {"eval": {"select": "matching_score"}}
    best = {"step": 500, "best_validation": 0.16, "config": conf}
    late = {"step": 4500, "best_validation": 0.16, "config": conf}
    assert "the run's best" in _selection(best, run) and "0.1600" in _selection(best, run)
    text = _selection(late, run)
    assert text.startswith("; not the run's best") and "0.1400" in text and "0.1600" in text
    assert _selection({"step": 1, "config": conf}, run) == ""
    assert _threads([{"threads": 1}, {"threads": 1}]) == "1 thread of "
    assert _threads([{"threads": 2}]) == "2 threads of "
    assert _threads([{"threads": 1}, {"threads": 2}]) == "" and _threads([{}]) == ""
