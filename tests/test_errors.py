"""The exception boundary: every error bad input can raise is one line and exit status 2 on
the command line (1 and a pointer to ``--debug`` for a bug, the traceback with
``--debug``), and the same message under a documented type in the Python API."""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import keypointlab as kl
from keypointlab import cli
from keypointlab.cli import main
from keypointlab.devices import available_devices, check_device
from keypointlab.models import loading

ERROR = "keypointlab: error: "


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(code: int, err: str, status: int = 2, prefix: str = ERROR) -> str:
    """The single stderr line of a failed command, checked: status, prefix, no traceback."""
    assert code == status, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(prefix), err
    return lines[0]


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 64), dtype=np.uint8), (3, 3), 0)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return _png(tmp_path / "a.png", 0), _png(tmp_path / "b.png", 1)


def _api_error(call: Callable[[], object], error: type[BaseException]) -> str:
    with pytest.raises(error) as info:
        call()
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# the boundary: --debug, --verbose, internal errors, library errors


def test_debug_shows_the_traceback_before_or_after_the_command(
    pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    missing = pair[0].with_name("missing.png")
    line = one_line(*run(capsys, "match", missing, pair[1], "--out", pair[0].with_suffix(".jpg")))
    assert str(missing) in line
    for argv in (["--debug", "match", missing, pair[1]], ["match", missing, pair[1], "--debug"]):
        with pytest.raises(kl.ImageReadError, match="missing.png"):
            main([str(a) for a in argv])


def test_verbose_is_logging_only(pair: tuple[Path, Path], capsys) -> None:
    missing = pair[0].with_name("missing.png")
    for flag in ("-v", "--verbose"):
        code, err = run(capsys, flag, "match", missing, pair[1])
        assert code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1].startswith(ERROR + str(missing))
        assert logging.getLogger("keypointlab").level == logging.DEBUG  # ours, not h5py's
        assert logging.getLogger("h5py").getEffectiveLevel() > logging.DEBUG
    run(capsys, "match", missing, pair[1])
    assert logging.getLogger("keypointlab").level == logging.NOTSET


def test_only_global_flags_run_the_demo_with_them(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(cli, "cmd_demo", lambda args: seen.append(args) or 0)
    assert main(["--debug"]) == 0 and main(["-v"]) == 0
    assert [a.command for a in seen] == ["demo", "demo"]
    assert seen[0].debug and not seen[0].verbose and seen[1].verbose and not seen[1].debug


def _raise(exc: BaseException) -> Callable[[], None]:
    def f() -> None:
        raise exc

    return f


def _cv2_error() -> None:
    cv2.cvtColor(np.zeros((4, 4, 2), np.uint8), cv2.COLOR_BGR2GRAY)


def _yaml_error() -> None:
    import yaml

    yaml.safe_load("a: [1,\n  b: {")


def _safetensors_error() -> None:
    from safetensors.torch import load

    load(b"abc")


def _h5_error(tmp: Path) -> None:
    import h5py

    path = tmp / "notes.h5"
    path.write_text("not hdf5")
    h5py.File(path, "r")


LIBRARY_CASES = {
    "cv2": (_cv2_error, "OpenCV: "),
    "yaml": (_yaml_error, "invalid YAML: "),
    "safetensors": (_safetensors_error, "invalid safetensors file: "),
    "json": (lambda: json.loads("{"), "invalid JSON (Expecting property name"),
    "unicode": (lambda: b"\xff".decode("utf-8"), "not valid UTF-8"),
    "memory": (_raise(MemoryError("Unable to allocate 9.3 GiB")), "out of memory (Unable to"),
    "torch-oom": (
        _raise(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate")),
        "out of memory (DefaultCPUAllocator",
    ),
    "key": (_raise(KeyError("model")), "missing entry 'model'"),
    "h5py": (None, "file signature not found"),
}


@pytest.mark.parametrize("case", sorted(LIBRARY_CASES))
def test_library_errors_are_one_line_of_bad_input(
    case: str, pair: tuple[Path, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    make, needle = LIBRARY_CASES[case]
    make = make or (lambda: _h5_error(tmp_path))
    monkeypatch.setattr(cli, "cmd_match", lambda args: make())
    line = one_line(*run(capsys, "match", *pair))
    assert needle in line, line
    with pytest.raises(BaseException) as direct:
        make()
    with pytest.raises(type(direct.value)):  # --debug: the library's own exception
        main(["--debug", "match", *map(str, pair)])


def test_a_bug_is_one_line_with_a_pointer_to_debug(pair, monkeypatch, capsys) -> None:
    def bug(args: object) -> int:
        return 1 // 0

    monkeypatch.setattr(cli, "cmd_match", bug)
    line = one_line(*run(capsys, "match", *pair), status=1, prefix="keypointlab: internal error:")
    assert "ZeroDivisionError: integer division or modulo by zero" in line
    assert "run with --debug for the traceback" in line
    with pytest.raises(ZeroDivisionError):
        main(["match", *map(str, pair), "--debug"])
    monkeypatch.setattr(cli, "cmd_match", lambda args: _raise(TypeError("'int' is not iterable"))())
    line = one_line(*run(capsys, "match", *pair), status=1, prefix="keypointlab: internal error:")
    assert "TypeError: 'int' is not iterable" in line


def test_interrupt_is_one_line_and_status_130(pair, monkeypatch, capsys) -> None:
    monkeypatch.setattr(cli, "cmd_match", lambda args: _raise(KeyboardInterrupt())())
    assert one_line(*run(capsys, "match", *pair), 130, "keypointlab: interrupted")
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", "match", *map(str, pair)])


def test_out_of_memory_names_the_image(pair, monkeypatch, capsys) -> None:
    from keypointlab.features.classical import OpenCVExtractor

    def oom(self: object, image: np.ndarray) -> None:
        raise MemoryError("Unable to allocate 9.3 GiB")

    monkeypatch.setattr(OpenCVExtractor, "_extract", oom)
    line = one_line(*run(capsys, "match", *pair, "--out", pair[0].with_suffix(".jpg")))
    assert line.startswith(f"{ERROR}{pair[0]}: out of memory extracting sift features of this")
    assert "64x64 image" in line


def test_model_option_errors_are_bad_input(capsys) -> None:
    line = one_line(*run(capsys, "ship", "run", "--name", "x", "--model-option", "pyramid=[1,"))
    assert "--model-option 'pyramid=[1,': invalid YAML" in line
    line = one_line(*run(capsys, "ship", "run", "--name", "x", "--model-option", "pyramid"))
    assert "--model-option 'pyramid': expected KEY=VALUE" in line


# ---------------------------------------------------------------------------------------------
# devices


NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("device", ["bogus", "cuda:x", "meta"] + (["cuda", "cuda:1"] * NO_CUDA))
def test_unavailable_device_is_refused_by_the_api(device: str) -> None:
    msg = _api_error(lambda: kl.load_extractor("kp2d_fast", device=device), kl.InputError)
    assert f"'{device}'" in msg and f"available: {', '.join(available_devices())}" in msg
    assert _api_error(lambda: kl.load_extractor("sift", device=device), kl.InputError) == msg
    with pytest.raises(kl.InputError, match="available"):
        loading.load_shipped("kp2d_fast", device=device)


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA build with a GPU has cuda")
def test_cuda_on_a_cpu_build_says_so() -> None:
    msg = _api_error(lambda: check_device("cuda", "--device"), kl.InputError)
    reason = "has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
    assert msg.startswith("--device 'cuda' is not available: ") and reason in msg


def test_device_objects_and_cpu_pass() -> None:
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(kl.InputError, match="expected a device name"):
        check_device(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["bogus"] + ["cuda"] * NO_CUDA)
@pytest.mark.parametrize("command", ["match", "extract", "evaluate", "adapt"])
def test_unavailable_device_is_refused_before_any_work(
    command: str, device: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every input below is missing: the device is what the one line is about."""
    missing = tmp_path / "missing"
    argv = {
        "match": ["match", missing / "a.png", missing / "b.png", "--features", "kp2d_fast"],
        "extract": ["extract", missing, "--out", tmp_path / "f.h5", "--features", "kp2d_fast"],
        "evaluate": ["evaluate", "--data", missing, "--features", "kp2d_fast", "--out", missing],
        "adapt": ["adapt", missing, missing, "--out", tmp_path / "l.h5"],
    }[command]
    line = one_line(*run(capsys, *argv, "--device", device))
    api = _api_error(lambda: check_device(device, "--device"), kl.InputError)
    assert line == ERROR + api and f"--device '{device}'" in line
    assert list(tmp_path.iterdir()) == []


def test_train_device_is_checked_first(tmp_path: Path, capsys) -> None:
    config = Path(loading.__file__).parents[1] / "configs" / "kp2d.yaml"
    out = tmp_path / "run"
    line = one_line(*run(capsys, "train", config, "train.device=bogus", f"train.out={out}"))
    assert line.startswith(ERROR + "train.device 'bogus': not a device name")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# load_extractor's name


@pytest.mark.parametrize("name", [None, 3, b"sift", ["sift"]])
def test_load_extractor_of_a_non_name(name: object) -> None:
    with pytest.raises(kl.InputTypeError) as info:
        kl.load_extractor(name)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and isinstance(info.value, kl.InputError)
    msg = str(info.value)
    assert msg.startswith("feature name must be a string") and f"got {name!r}" in msg
    assert "available: " in msg and "sift" in msg


def test_load_extractor_takes_paths(tmp_path: Path) -> None:
    assert kl.load_extractor(Path("sift")).name == "sift"
    missing = tmp_path / "run.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        kl.load_extractor(missing)


# ---------------------------------------------------------------------------------------------
# shipped weights: truncated, wrong architecture, malformed .json


@pytest.fixture
def weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private weights folder holding a copy of ``kp2d_fast``."""
    folder = tmp_path / "weights"
    folder.mkdir()
    for ext in ("json", "safetensors"):
        shutil.copy(loading.WEIGHTS_DIR / f"kp2d_fast.{ext}", folder / f"kp2d_fast.{ext}")
    monkeypatch.setattr(loading, "WEIGHTS_DIR", folder)
    return folder


def _same_message_in_api_and_cli(name: str, pair, capsys) -> str:
    msg = _api_error(lambda: kl.load_extractor(name), kl.InputError)
    line = one_line(*run(capsys, "match", *pair, "--features", name))
    assert line == ERROR + msg
    return msg


def _header_too_large() -> bytes:
    return (2**62).to_bytes(8, "little") + b"{}"


@pytest.mark.parametrize(
    "content",
    [
        lambda data: data[:5000],
        lambda data: data[:3],
        lambda data: b"",
        lambda data: b"not a safetensors file at all",
        lambda data: _header_too_large(),
    ],
    ids=["truncated", "stub", "empty", "garbage", "huge-header"],
)
def test_truncated_safetensors_names_the_file(content, weights: Path, pair, capsys) -> None:
    path = weights / "kp2d_fast.safetensors"
    path.write_bytes(content(path.read_bytes()))
    msg = _same_message_in_api_and_cli("kp2d_fast", pair, capsys)
    assert msg.startswith(f"{path}: cannot read the weights of shipped model 'kp2d_fast'")
    assert "truncated or not a safetensors file" in msg


def test_wrong_architecture_names_the_file(weights: Path, pair, capsys) -> None:
    from safetensors.torch import load_file, save_file

    path = weights / "kp2d_fast.safetensors"
    real = Path(loading.__file__).parents[1] / "weights"
    save_file(load_file(real / "superpoint.safetensors"), path)  # another method
    msg = _same_message_in_api_and_cli("kp2d_fast", pair, capsys)
    assert msg.startswith(f"{path}: weights do not fit model 'kp2d' (")
    assert "missing (e.g. keypoint_net." in msg and "unexpected (e.g. " in msg
    assert len(msg) < 400
    save_file(load_file(real / "kp2d.safetensors"), path)  # the same method, wider
    msg = _same_message_in_api_and_cli("kp2d_fast", pair, capsys)
    assert "of another shape (e.g. keypoint_net." in msg and "in the file, (" in msg


def test_checkpoint_weights_that_are_not_tensors_name_the_file(tmp_path: Path) -> None:
    from keypointlab.io.checkpoint import save_checkpoint

    state = {"method": "kp2d", "model": [1, 2], "step": 1, "config": {"model": {}}}
    path = save_checkpoint(state, tmp_path, 1)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        kl.load_extractor(str(path))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{not json", "not valid JSON (Expecting property name"),
        (b"\xff\xfe{}", "not valid JSON ('utf-8' codec"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"model": {}}', "'method' must be a method name, got None"),
        ('{"method": 3}', "'method' must be a method name, got 3"),
        ('{"method": "nosuch"}', "cannot build model 'nosuch': unknown method 'nosuch'"),
        ('{"method": "kp2d", "model": [1]}', "'model' must be a mapping"),
        ('{"method": "kp2d", "model": {"bogus": 1}}', "unknown config key 'bogus'"),
        ('{"method": "kp2d", "scales": [Infinity]}', "'scales' must be a list of positive"),
        ('{"method": "kp2d", "scales": "1"}', "'scales' must be a list of positive"),
    ],
)
def test_malformed_shipped_json_names_the_file(
    text: str | bytes, needle: str, weights: Path, pair, capsys
) -> None:
    path = weights / "kp2d_fast.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    msg = _same_message_in_api_and_cli("kp2d_fast", pair, capsys)
    assert msg.startswith(f"{path}: ") and needle in msg, msg


def test_shipped_json_without_its_weights(weights: Path, pair, capsys) -> None:
    (weights / "kp2d_fast.safetensors").unlink()
    msg = _same_message_in_api_and_cli("kp2d_fast", pair, capsys)
    assert (
        msg == f"{weights / 'kp2d_fast.safetensors'}: weights of shipped model 'kp2d_fast' "
        "are missing"
    )


def test_good_shipped_copy_still_loads(weights: Path) -> None:
    extractor = kl.load_extractor("kp2d_fast")
    assert extractor.name == "kp2d_fast"


# ---------------------------------------------------------------------------------------------
# match / estimate / draw_matches


def _features(n: int, dim: int) -> kl.Features:
    rng = np.random.default_rng(n + dim)
    return kl.Features(
        rng.uniform(0, 60, (n, 2)), rng.uniform(size=n), rng.normal(size=(n, dim)), (64, 64)
    )


def test_matching_features_of_two_extractors() -> None:
    msg = _api_error(lambda: kl.match(_features(5, 128), _features(6, 256)), kl.InputError)
    assert msg.startswith("f0 has 128-D descriptors and f1 256-D")


@pytest.mark.parametrize("bad", [None, "features", np.zeros((3, 2))])
def test_match_of_something_that_is_not_features(bad: object) -> None:
    for args in ((bad, _features(3, 8)), (_features(3, 8), bad)):
        with pytest.raises(kl.InputTypeError, match="expected Features"):
            kl.match(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("matches", "needle"),
    [
        ([[0, 7]], "column 1 indexes f1, which has 6 keypoints, but holds values from 7 to 7"),
        ([[-1, 0]], "column 0 indexes f0, which has 5 keypoints"),
        ([[0.5, 1.0]], "expected (M, 2) integer index pairs"),
        ([["a", "b"]], "expected (M, 2) integer index pairs"),
        ([[0, 1, 2]], "expected (M, 2) integer index pairs"),
    ],
)
def test_estimate_and_draw_check_the_matches(matches: list, needle: str) -> None:
    f0, f1 = _features(5, 8), _features(6, 8)
    assert needle in _api_error(lambda: kl.estimate(f0, f1, matches), kl.InputError)
    image = np.zeros((64, 64), np.uint8)
    assert needle in _api_error(
        lambda: kl.draw_matches(image, image, f0, f1, matches), kl.InputError
    )


def test_no_matches_are_fine() -> None:
    f0, f1 = _features(5, 8), _features(0, 8)
    assert kl.match(f0, f1).shape == (0, 2)
    assert not kl.estimate(f0, f1, np.zeros((0, 2), np.int64)).success
    assert not kl.estimate(f0, f1, []).success


def test_error_classes_are_exported() -> None:
    assert issubclass(kl.LimitError, kl.InputError) and issubclass(kl.InputError, ValueError)
    assert issubclass(kl.InputTypeError, TypeError) and issubclass(kl.OutputError, OSError)
    assert issubclass(kl.InputError, kl.KeypointLabError)
    assert {"InputError", "KeypointLabError", "OutputError", "LimitError"} <= set(kl.__all__)
