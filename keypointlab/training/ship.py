"""Turn a training run into shipped weights: safetensors, model config and a model card.

The card records where the weights come from (config, seed, data, git revision, training
time) and what they measure on the evaluation data, beside SIFT and ORB measured in the
same run, so every figure in it can be reproduced.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from safetensors.torch import save, save_file

from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.evaluation.report import markdown_table, sequence_table, write_atomic
from keypointlab.features import get_extractor
from keypointlab.features.learned import LearnedExtractor
from keypointlab.models.base import build_model
from keypointlab.models.loading import WEIGHTS_DIR, load_run, load_shipped

PROTOCOL_CONFIGS = (((240, 320), 300), ((480, 640), 1000))


def _provenance(run: Path) -> list[dict[str, Any]]:
    path = run / "runs.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _validations(run: Path) -> dict[int, dict[str, Any]]:
    """The run's held-out validation records by step (``validation.jsonl``)."""
    path = run / "validation.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r["step"]): r for r in rows if "step" in r}


def _selection(state: dict[str, Any], run: Path) -> str:
    """How the checkpoint was chosen, when the run validated: the run's best, or (a
    checkpoint picked otherwise) its own validation beside the run's best."""
    best = state.get("best_validation")
    if best is None:
        return ""
    select = state.get("config", {}).get("eval", {}).get("select", "validation")
    records = _validations(run)
    own = records.get(int(state["step"]), {}).get(select)
    if own is None or abs(float(own) - float(best)) < 1e-12:
        return f"; the run's best on held-out validation pairs ({select} {best:.4f})"
    return (
        f"; not the run's best on held-out validation pairs: this step's {select} "
        f"{float(own):.4f}, the run's best {best:.4f}"
    )


def _threads(provenance: list[dict[str, Any]]) -> str:
    """``N thread(s) of`` as every (re)start of the run recorded it, else empty."""
    threads = {p.get("threads") for p in provenance}
    if len(threads) != 1 or None in threads:
        return ""
    (n,) = threads
    return f"{n} thread{'s' if n != 1 else ''} of "


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    """A shipped model's name: letters, digits, ``_ . -``, at most 64, not starting with a
    dot or dash (so it stays a file name inside the weights folder)."""
    if not NAME_PATTERN.fullmatch(name) or name.endswith(".tmp"):
        raise ValueError(
            f"ship --name {name!r}: use 1-64 letters, digits, '_', '.', '-', starting with a "
            "letter or digit"
        )
    return name


def _source_card_training(card: Path, source: str) -> list[str]:
    """The ``## Training`` section of a shipped model's card (its provenance)."""
    text = card.read_text() if card.is_file() else ""
    start = text.find("## Training")
    if start < 0:
        return ["## Training", "", f"- the weights of `{source}` (its card has no training record)"]
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)].rstrip().splitlines()


def _write_safetensors(tensors: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ship_model(
    run: str | Path,
    name: str,
    eval_data: str | Path,
    out_dir: str | Path = WEIGHTS_DIR,
    note: str = "",
    scales: tuple[float, ...] = (1.0,),
    model_options: dict[str, Any] | None = None,
    weights_of: str | None = None,
    force: bool = False,
) -> Path:
    """Write ``<name>.safetensors``, ``<name>.json`` and ``<name>.md`` into ``out_dir``;
    returns the model card's path.

    ``run`` is a run folder (its newest checkpoint), a checkpoint file (e.g. the run's
    ``best.pt``, chosen on validation) or the name of a model already shipped in ``out_dir``
    (its weights under other inference settings: the card carries over its training record).
    ``scales`` become the model's default extraction scales (see
    :class:`~keypointlab.features.learned.DenseExtractor`); the card then measures the model
    at those scales and at scale 1. ``model_options`` override entries of the model config
    (inference settings such as D2-Net's ``pyramid``); with ``weights_of`` (implied for a
    shipped source) no tensors are written and ``<name>.json`` points at that shipped
    model's (one set of weights, two names).

    The evaluation runs first; files are written only after it succeeded, each through a
    temporary file, the ``.json`` (which makes the model visible) last.

    Raises:
        ValueError: ``name`` is not a safe file name.
        FileExistsError: ``name`` is shipped already and ``force`` is not set.
        FileNotFoundError: no such run, checkpoint, shipped source or ``weights_of``.
    """
    scales = tuple(float(s) for s in scales)
    out = Path(out_dir)
    check_name(name)
    existing = [p.name for p in (out / f"{name}{ext}" for ext in (".json", ".md")) if p.exists()]
    if not weights_of:
        existing += [f"{name}.safetensors"] if (out / f"{name}.safetensors").exists() else []
    if existing and not force:
        raise FileExistsError(
            f"{out}: shipped model {name!r} exists ({', '.join(existing)}); pass --force "
            "to replace it"
        )
    source = Path(run)
    shipped_source = not source.exists() and (out / f"{run}.json").is_file()
    if shipped_source:
        loaded = load_shipped(str(run), weights_dir=out)
        meta = json.loads((out / f"{run}.json").read_text())
        weights_of = weights_of or str(meta.get("weights", run))
        if weights_of == name:  # re-shipped under its own name: its own file, kept as is
            weights_of = None
        state, model, method = None, loaded.model, loaded.method
        base_conf = meta["model"]
    else:
        run_dir = source.parent if source.is_file() else source
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{source}: no such run folder, checkpoint or shipped model")
        loaded = load_run(source)
        state, model, method = loaded.state, loaded.model, loaded.method
        base_conf = state["config"]["model"]
    model_conf = {**base_conf, **(model_options or {})}
    if model_options:
        weights = model.state_dict()
        module = state.get("method_module") if state else None
        model = build_model(method, model_conf, module).eval()
        model.load_state_dict(weights)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights_file = out / f"{weights_of or name}.safetensors"
    if weights_of and not weights_file.is_file():
        raise FileNotFoundError(f"{weights_file}: ship {weights_of!r} before {name!r}")
    meta = {"method": method, "model": model_conf, "scales": list(scales)}
    if weights_of:
        meta["weights"] = weights_of

    sequences, skipped = load_dataset(eval_data)
    extractors = [LearnedExtractor(model, name)]
    if scales != (1.0,):
        extractors.insert(0, LearnedExtractor(model, name, scales=scales))
    extractors += [get_extractor("sift"), get_extractor("orb")]
    results = [
        evaluate_features(ex, sequences, size, k, skipped, progress=False)
        for size, k in PROTOCOL_CONFIGS
        for ex in extractors
    ]
    n_params = sum(v.numel() for k, v in tensors.items() if not k.startswith("io_net"))
    size_mb = (weights_file.stat().st_size if weights_of else len(save(tensors))) / 1e6
    options = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in (model_options or {}).items())
    card = [
        f"# {name}",
        "",
        f"Method `{method}`, trained by KeypointLab from scratch without labels. "
        f"{n_params / 1e6:.2f} M parameters in the extractor; "
        f"{size_mb:.1f} MB file"
        + (f" (`{weights_file.name}`, shared with `{weights_of}`)" if weights_of else "")
        + ". License: Apache-2.0.",
        "",
        note,
        "",
        f"Default extraction: image scales {', '.join(f'{v:g}' for v in scales)} "
        f"(`{extractors[0].name}` below; `scales=(1.0,)` runs once on the image as given)"
        + (
            f"; model options {options} over the {'shipped model' if shipped_source else 'run'}"
            f"'s config"
            if options
            else ""
        )
        + ".",
        "",
    ]
    if shipped_source:
        card += _source_card_training(out / f"{run}.md", str(run))
    else:
        card += _training_section(source, loaded.path, state)
    card += [
        "",
        f"## Measured on `{eval_data}`",
        "",
        "Protocol of `shared/PROTOCOL.md`; SIFT and ORB measured in the same run.",
        "",
        markdown_table(results),
        "",
        "### Matching score per sequence (240x320, top-300)",
        "",
        sequence_table(results[: len(extractors)], "matching_score"),
        "",
        "### Homography accuracy @3px per sequence (240x320, top-300)",
        "",
        sequence_table(results[: len(extractors)], "homography_accuracy_3"),
        "",
    ]
    out.mkdir(parents=True, exist_ok=True)
    if not weights_of and not (shipped_source and weights_file.is_file()):
        _write_safetensors(tensors, weights_file)
    path = write_atomic(out / f"{name}.md", "\n".join(card))
    write_atomic(out / f"{name}.json", json.dumps(meta, indent=1))
    return path


def _training_section(source: Path, ckpt_path: Path, state: dict[str, Any]) -> list[str]:
    conf = state["config"]
    run = source.parent if source.is_file() else source
    provenance = _provenance(run)
    lines = [
        "## Training",
        "",
        f"- checkpoint: `{ckpt_path.name}`, step {state['step']}, "
        f"{state['train_seconds'] / 60:.1f} min of training on {_threads(provenance)}a 2-core "
        "CPU" + _selection(state, run),
        f"- data: `{conf['data']['train']}` (unlabelled photographs), crops "
        f"{conf['data']['size']}, seed {conf['train']['seed']}",
        "- command and revision per (re)start:",
    ]
    for p in provenance or [{}]:
        argv = " ".join(p.get("argv", ["(not recorded)"]))
        dirty = " (with uncommitted changes)" if p.get("git_dirty") else ""
        lines.append(f"  - `{argv}` at git `{p.get('git_revision', '(not recorded)')}`{dirty}")
    return lines + [
        "",
        "```json",
        json.dumps({k: conf[k] for k in ("model", "loss", "data", "train")}, indent=1),
        "```",
    ]
