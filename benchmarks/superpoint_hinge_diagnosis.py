"""Why SuperPoint's descriptor hinge does not train the CPU-sized encoder (issue 21): one
change at a time, descriptor loss only (no detector labels needed).

    python benchmarks/superpoint_hinge_diagnosis.py --steps 300 \\
        --out benchmarks/results/superpoint_hinge

Experiments, each on homographic pairs of the training photographs at 120x160 (the
SuperPoint config's crops and homography sampler), Adam at 1e-3, batch 8:

- ``free``: no network, a free descriptor per cell of one fixed pair (Adam at 1e-2); the
  hinge must separate positives from negatives when the representation is unconstrained.
- ``overfit``: the CPU-sized SuperPoint (``superpoint.yaml``'s widths) on one fixed pair.
- ``train``: the same network on a new pair each step, and variants changing one thing:
  the paper's weight against the config's (only the descriptor loss is trained, so the
  weight only scales the gradient: with Adam it should not matter), the positive radius
  (``descriptor_threshold`` 8 against 6 and 4 px, the latter also with ``lambda_d`` 1000
  to give the fewer positives their weight back), ``lambda_d`` 60 and 15 at 8 px (the
  positives' total weight of the 4-px run and less), the negative margin, and the hinge
  replaced by a cross-entropy over cells (KP2D's, what trained UnsuperPoint).

Logged per run: ``desc_recall`` (fraction of view-0 cells whose most similar view-1 cell is
a positive: chance is about 3/300) and the mean dot product of positive and negative pairs,
also split into negatives adjacent to a positive (within 16 px) and far ones; at the
start, the gradient norm each term sends into the encoder. Writes ``OUT/report.md`` and
``OUT/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from keypointlab.data.pairs import HomographicPairs, load_image_cache
from keypointlab.geometry.groundtruth import as_ground_truth, finite_points
from keypointlab.geometry.keypoints import cell_centers
from keypointlab.losses.superpoint import descriptor_loss
from keypointlab.models.base import build_model
from keypointlab.training.trainer import load_config

CONFIG = Path(__file__).resolve().parents[1] / "keypointlab" / "configs" / "superpoint.yaml"


def _cells(desc0, desc1, H, cell=8):
    """Normalised cell descriptors of both views ``(B, N, D)``, the distances ``(B, N, M)``
    from each warped view-0 cell centre to every view-1 centre, and where it is known."""
    b, _, hc, wc = desc0.shape
    d0 = F.normalize(desc0.flatten(2), dim=1).transpose(1, 2)
    d1 = F.normalize(desc1.flatten(2), dim=1).transpose(1, 2)
    centers = cell_centers(hc, wc, cell, desc0.device, desc0.dtype).flatten(1).T
    warped, known = as_ground_truth(H).warp_0to1(centers.expand(b, -1, -1))
    dist = torch.cdist(finite_points(warped), centers.expand(b, -1, -1))
    return d0, d1, dist, known


def pair_stats(desc0, desc1, H, threshold=8.0):
    """Mean dot of positives, adjacent negatives (cell centres 8-16 px from the warped
    centre) and far negatives, over the pairs of a batch."""
    d0, d1, dist, known = _cells(desc0, desc1, H)
    dot = d0 @ d1.transpose(1, 2)
    known = known[:, :, None].expand_as(dist)
    pos = (dist < threshold) & known
    near = (dist >= threshold) & (dist < 2 * threshold) & known
    far = (dist >= 2 * threshold) & known
    return {k: float(dot[m].mean()) for k, m in (("pos", pos), ("near", near), ("far", far))}


def infonce(desc0, desc1, H, threshold=8.0, temperature=0.1):
    """Cross-entropy over view-1 cells: the target is the cell nearest the warped centre
    (when closer than ``threshold``)."""
    d0, d1, dist, known = _cells(desc0, desc1, H)
    best, target = dist.min(-1)
    ok = known & (best < threshold)
    logits = d0 @ d1.transpose(1, 2) / temperature
    return F.cross_entropy(logits[ok], target[ok])


class Free(torch.nn.Module):
    """A free descriptor per cell of each view of one pair."""

    def __init__(self, hc: int, wc: int, dim: int) -> None:
        super().__init__()
        self.d = torch.nn.Parameter(torch.randn(2, dim, hc, wc) * 0.1 + 0.5)  # all positive

    def forward(self, view: int) -> torch.Tensor:
        return self.d[view : view + 1]


def run(name, net, batches, steps, loss_kind, conf, lr=1e-3):
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    log = []
    t0 = time.perf_counter()
    for step in range(steps + 1):
        batch = batches(step)
        if isinstance(net, Free):
            d0, d1 = net(0), net(1)
        else:
            d0 = net({"image": batch["image0"]})["descriptors"]
            d1 = net({"image": batch["image1"]})["descriptors"]
        H = batch["H_0to1"]
        if loss_kind == "hinge":
            loss, m = descriptor_loss(
                d0,
                d1,
                H,
                lambda_d=conf["lambda_d"],
                margin_positive=conf["margin_positive"],
                margin_negative=conf["margin_negative"],
                threshold=conf["threshold"],
            )
            loss = conf["weight"] * loss
        else:
            loss = infonce(d0, d1, H, threshold=conf["threshold"])
            with torch.no_grad():
                _, m = descriptor_loss(d0, d1, H, threshold=conf["threshold"])
        if step % max(1, steps // 20) == 0 or step == steps:
            with torch.no_grad():
                s = pair_stats(d0, d1, H, threshold=8.0)  # the same measure for every run
                _, m8 = descriptor_loss(d0, d1, H, threshold=8.0)
            log.append({"step": step, "recall": float(m8["desc_recall"]), **s})
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"{name}: recall {log[-1]['recall']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return log


def gradient_norms(net, batch, conf):
    """Norm of the encoder gradient of the positive and of the negative hinge term."""
    enc = [p for n, p in net.named_parameters() if not n.startswith("descriptor")]
    out = {}
    for term in ("positive", "negative"):
        net.zero_grad()
        d0 = net({"image": batch["image0"]})["descriptors"]
        d1 = net({"image": batch["image1"]})["descriptors"]
        big = 1e9
        loss, _ = descriptor_loss(
            d0,
            d1,
            batch["H_0to1"],
            lambda_d=conf["lambda_d"] if term == "positive" else 0.0,
            margin_positive=conf["margin_positive"] if term == "positive" else -big,
            margin_negative=conf["margin_negative"] if term == "negative" else big,
        )
        loss.backward()
        out[term] = float(torch.sqrt(sum((p.grad**2).sum() for p in enc if p.grad is not None)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/superpoint_hinge"))
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = load_config(str(CONFIG), [])
    size = tuple(cfg["data"]["size"])
    images = load_image_cache(args.train, max_side=max(size) * 2, progress=False, holdout=0.1)
    data = HomographicPairs(images, size, cfg["data"]["homography"], seed=0)

    def batch_of(indices):
        items = [data[i] for i in indices]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    fixed = batch_of([0])
    paper = {"lambda_d": 250.0, "margin_positive": 1.0, "margin_negative": 0.2, "threshold": 8.0}
    runs = {
        "free (one pair, no network)": ("free", "hinge", {**paper, "weight": 1.0}, "fixed"),
        "overfit (one pair)": ("net", "hinge", {**paper, "weight": 1.0}, "fixed"),
        "train, paper's hinge": ("net", "hinge", {**paper, "weight": 1.0}, "new"),
        "train, weight 1e-4": ("net", "hinge", {**paper, "weight": 1e-4}, "new"),
        "train, positives < 4 px": (
            "net",
            "hinge",
            {**paper, "weight": 1.0, "threshold": 4.0},
            "new",
        ),
        "train, positives < 4 px, lambda_d 1000": (
            "net",
            "hinge",
            {**paper, "weight": 1.0, "threshold": 4.0, "lambda_d": 1000.0},
            "new",
        ),
        "train, lambda_d 60": ("net", "hinge", {**paper, "weight": 1.0, "lambda_d": 60.0}, "new"),
        "train, lambda_d 15": ("net", "hinge", {**paper, "weight": 1.0, "lambda_d": 15.0}, "new"),
        "train, positives < 6 px": (
            "net",
            "hinge",
            {**paper, "weight": 1.0, "threshold": 6.0},
            "new",
        ),
        "train, negative margin 0.5": (
            "net",
            "hinge",
            {**paper, "weight": 1.0, "margin_negative": 0.5},
            "new",
        ),
        "train, cross-entropy": ("net", "infonce", {**paper, "weight": 1.0}, "new"),
    }
    if args.only:
        runs = {k: v for k, v in runs.items() if any(o in k for o in args.only)}
    logs, grads = {}, None
    for name, (kind, loss_kind, conf, pairs) in runs.items():
        torch.manual_seed(0)
        if kind == "free":
            hc, wc = size[0] // 8, size[1] // 8
            net = Free(hc, wc, cfg["model"]["descriptor_dim"])
        else:
            net = build_model("superpoint", cfg["model"])
            net.train()
            if grads is None:
                grads = gradient_norms(net, batch_of(range(8)), paper)
        batches = (
            (lambda step: fixed)
            if pairs == "fixed"
            else (lambda step: batch_of(range(8 * step + 1000, 8 * step + 1008)))
        )
        lr = 1e-2 if kind == "free" else 1e-3  # free descriptors start at scale 0.5
        logs[name] = run(name, net, batches, args.steps, loss_kind, conf, lr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "log.json").write_text(json.dumps({"grads": grads, "runs": logs}, indent=1))
    lines = [
        "# SuperPoint's descriptor hinge, one change at a time",
        "",
        f"`python benchmarks/superpoint_hinge_diagnosis.py --steps {args.steps}`; "
        "descriptor loss only, 120x160 pairs, Adam 1e-3, batch 8 (free/overfit: one pair). "
        "Recall: view-0 cells whose most similar view-1 cell is a positive (< 8 px); dots: "
        "mean cosine of positive pairs, of negatives 8-16 px away (next to a positive) and of "
        "far negatives, at the last step.",
        "",
        "| run | recall start | recall end | pos | near neg | far neg |",
        "|---|---|---|---|---|---|",
    ]
    for name, log in logs.items():
        a, z = log[0], log[-1]
        lines.append(
            f"| {name} | {a['recall']:.3f} | {z['recall']:.3f} | {z['pos']:.2f} | "
            f"{z['near']:.2f} | {z['far']:.2f} |"
        )
    if grads:
        lines += [
            "",
            f"Encoder gradient norms at the start (one batch of 8, paper's weights): positive "
            f"term {grads['positive']:.3g}, negative term {grads['negative']:.3g}.",
        ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, log in logs.items():
        steps = [r["step"] for r in log]
        axes[0].plot(steps, [r["recall"] for r in log], label=name)
        axes[1].plot(steps, [r["pos"] - r["near"] for r in log], label=name)
    axes[0].set_title("descriptor recall (chance ~.01)")
    axes[1].set_title("positive minus adjacent-negative cosine")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=110)


if __name__ == "__main__":
    main()
