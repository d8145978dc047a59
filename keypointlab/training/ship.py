"""Turn a training run into shipped weights: safetensors, model config and a model card.

The card records where the weights come from (config, seed, data, git revision, training
time) and what they measure on the evaluation data, beside SIFT and ORB measured in the
same run, so every figure in it can be reproduced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from keypointlab.data.sequences import load_dataset
from keypointlab.evaluation.benchmark import evaluate_features
from keypointlab.evaluation.report import markdown_table, sequence_table, write_atomic
from keypointlab.features import get_extractor
from keypointlab.features.learned import LearnedExtractor
from keypointlab.models.base import build_model
from keypointlab.models.loading import WEIGHTS_DIR, load_run

PROTOCOL_CONFIGS = (((240, 320), 300), ((480, 640), 1000))


def _provenance(run: Path) -> list[dict[str, Any]]:
    path = run / "runs.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _selection(state: dict[str, Any]) -> str:
    """How the checkpoint was chosen, when the run validated."""
    best = state.get("best_validation")
    if best is None:
        return ""
    select = state.get("config", {}).get("eval", {}).get("select", "validation")
    return f"; the run's best on held-out validation pairs ({select} {best:.4f})"


def ship_model(
    run: str | Path,
    name: str,
    eval_data: str | Path,
    out_dir: str | Path = WEIGHTS_DIR,
    note: str = "",
    scales: tuple[float, ...] = (1.0,),
    model_options: dict[str, Any] | None = None,
    weights_of: str | None = None,
) -> Path:
    """Write ``<name>.safetensors``, ``<name>.json`` and ``<name>.md`` from ``run``'s last
    checkpoint, or from the checkpoint file ``run`` (e.g. the run's ``best.pt``, chosen on
    validation); returns the model card's path.

    ``scales`` become the model's default extraction scales (see
    :class:`~keypointlab.features.learned.DenseExtractor`); the card then measures the model
    at those scales and at scale 1. ``model_options`` override entries of the model config
    (inference settings such as D2-Net's ``pyramid``); with ``weights_of`` no tensors are
    written and ``<name>.json`` points at that shipped model's (one set of weights, two
    names)."""
    scales = tuple(float(s) for s in scales)
    source, out = Path(run), Path(out_dir)
    run = source.parent if source.is_file() else source
    if not run.is_dir():
        raise FileNotFoundError(f"{source}: no such run folder or checkpoint to ship")
    loaded = load_run(source)
    state, model, ckpt_path = loaded.state, loaded.model, loaded.path
    conf = state["config"]
    model_conf = {**conf["model"], **(model_options or {})}
    if model_options:
        weights = model.state_dict()
        model = build_model(state["method"], model_conf, state.get("method_module")).eval()
        model.load_state_dict(weights)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights_file = out / f"{weights_of or name}.safetensors"
    meta = {"method": state["method"], "model": model_conf, "scales": list(scales)}
    if weights_of:
        if not weights_file.is_file():
            raise FileNotFoundError(f"{weights_file}: ship {weights_of!r} before {name!r}")
        meta["weights"] = weights_of
    else:
        save_file(tensors, str(weights_file))
    write_atomic(out / f"{name}.json", json.dumps(meta, indent=1))

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
    card = [
        f"# {name}",
        "",
        f"Method `{state['method']}`, trained by KeypointLab from scratch without labels. "
        f"{n_params / 1e6:.2f} M parameters in the extractor; "
        f"{weights_file.stat().st_size / 1e6:.1f} MB file"
        + (f" (`{weights_file.name}`, shared with `{weights_of}`)" if weights_of else "")
        + ". License: Apache-2.0.",
        "",
        note,
        "",
        f"Default extraction: image scales {', '.join(f'{v:g}' for v in scales)} "
        f"(`{extractors[0].name}` below; `scales=(1.0,)` runs once on the image as given).",
        "",
        "## Training",
        "",
        f"- checkpoint: `{ckpt_path.name}`, step {state['step']}, "
        f"{state['train_seconds'] / 60:.1f} min of training on a 2-core CPU"
        + _selection(state),
        f"- data: `{conf['data']['train']}` (unlabelled photographs), crops "
        f"{conf['data']['size']}, seed {conf['train']['seed']}",
        "- command and revision per (re)start:",
    ]
    for p in _provenance(run) or [{}]:
        argv = " ".join(p.get("argv", ["(not recorded)"]))
        dirty = " (with uncommitted changes)" if p.get("git_dirty") else ""
        card.append(f"  - `{argv}` at git `{p.get('git_revision', '(not recorded)')}`{dirty}")
    card += [
        "",
        "```json",
        json.dumps({k: conf[k] for k in ("model", "loss", "data", "train")}, indent=1),
        "```",
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
    return write_atomic(out / f"{name}.md", "\n".join(card))
