"""Where a learned extractor spends its time: FLOPs and the slowest operators.

python benchmarks/profile_extractor.py kp2d --size 480x640 > benchmarks/results/kp2d_profile.txt
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from keypointlab.features import get_extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="shipped model or checkpoint")
    parser.add_argument("--size", default="480x640")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    net = get_extractor(args.name).net.eval()
    x = torch.rand(1, 3, h, w)
    with torch.inference_mode():
        for _ in range(2):
            net({"image": x})
        with FlopCounterMode(display=False) as flops:
            net({"image": x})
        with torch.profiler.profile(record_shapes=True) as prof:
            for _ in range(3):
                net({"image": x})
    print(
        f"{args.name} at {h}x{w}: {flops.get_total_flops() / 1e9:.2f} GFLOPs per image, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=28
        )
    )


if __name__ == "__main__":
    main()
