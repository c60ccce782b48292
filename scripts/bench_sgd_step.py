"""Time one optimizer step on a GPU: FusedSGD against torch.optim.SGD(fused=True) and
torch.optim.SGD(foreach=True), on the parameters of a transformer-sized MLP (the issue's target:
FusedSGD at least as fast as SGD(fused=True)).

    python scripts/bench_sgd_step.py [--device cuda] [--dtype bfloat16] [--json PATH]

The fused_linreg benchmark times whole training steps; this isolates the optimizer, with the
same interleaved timing (fused_linreg._bench.timing).
"""
import argparse
import json

import torch

from fused_linreg import FusedSGD
from fused_linreg._bench.timing import Stats, time_interleaved

# (out_features, in_features) of the layers: 24 blocks of a 1024-wide MLP with a 4x hidden
# layer (~200M parameters), weights and biases: 96 tensors of four sizes.
LAYERS = [(4096, 1024), (1024, 4096)] * 24
OPTIONS = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


def make_params(device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    params = []
    for out_f, in_f in LAYERS:
        for shape in ((out_f, in_f), (out_f,)):
            p = torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_()
            p.grad = torch.randn(shape, generator=g, device=device, dtype=dtype)
            params.append(p)
    return params


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    optimizers = {
        "FusedSGD": lambda ps: FusedSGD(ps, **OPTIONS),
        "SGD(fused=True)": lambda ps: torch.optim.SGD(ps, fused=True, **OPTIONS),
        "SGD(foreach=True)": lambda ps: torch.optim.SGD(ps, foreach=True, **OPTIONS),
    }
    steps = {}
    for name, make in optimizers.items():
        opt = make(make_params(device, dtype))  # each its own parameters: no shared state
        steps[name] = opt.step
    results = time_interleaved(steps, sync=lambda: torch.cuda.synchronize(device), reps=args.reps,
                               warmup_s=0.5, sample_s=0.05)

    n_params = sum(o * i + o for o, i in LAYERS)
    print(f"optimizer step, {len(LAYERS) * 2} tensors, {n_params / 1e6:.0f}M {args.dtype} "
          f"parameters, momentum + weight decay, {torch.cuda.get_device_name(device)}")
    rows = []
    for name, r in results.items():
        if isinstance(r, Stats):
            rows.append(dict(impl=name, median_ms=r.median_ms, q1_ms=r.q1_ms, q3_ms=r.q3_ms))
            print(f"  {name:<18} {r.median_ms:8.3f} ms (IQR {r.q3_ms - r.q1_ms:.3f})")
        else:
            rows.append(dict(impl=name, error=r))
            print(f"  {name:<18} failed: {r}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(device), dtype=args.dtype,
                           params=n_params, tensors=len(LAYERS) * 2, options=OPTIONS, rows=rows),
                      f, indent=1)


if __name__ == "__main__":
    main()
