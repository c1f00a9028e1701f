"""The PyTorch peer of `benchmarks/swav_step.py`: a SwAV training step on torchvision's RegNetY,
written the way a PyTorch user would pretrain SEER on a CPU, timed the same way as ours.

    PYTHON benchmarks/peers/torch_swav.py --arch=regnet_y_400mf --batch=32 --crops=2x224,4x96 \
        [--precision=fp32|bf16] [--channels_last] [--compile] [--optimizer=lars|sgd]

One step, as facebookresearch/swav `main_swav.py` trains (one process, no queue):
  1. the prototypes are L2-normalized (no gradient);
  2. crops of one resolution go through the trunk together (swav's `ResNet.forward`), the pooled
     features of all crops through the projection head once: Linear-ReLU-Linear-ReLU-Linear
     without BatchNorm (VISSL `swav_head`, SEER's large-model head), L2 normalization and a
     bias-free prototypes layer (K=3000);
  3. codes for crops 0 and 1 by Sinkhorn-Knopp (eps 0.05, 3 iterations, float32, no gradient);
     the loss is the swapped prediction of every other crop (temperature 0.1);
  4. backward, then SGD (momentum 0.9, wd 1e-6), wrapped in LARC (trust 0.001, no clipping:
     apex's `LARC(clip=False)`, which VISSL and SEER use) with --optimizer=lars.
The variants a PyTorch user reaches for: `--precision=bf16` (torch.autocast on the CPU in
bfloat16 around the forward; Sinkhorn and the loss in float32), `--channels_last`, `--compile`
(torch.compile, inductor). Inputs are random tensors made once: data loading is not measured.

Prints one JSON object: images/s (an image = all its crops), step time median/min, CPU cores
used, peak memory of the step, the loss, torch's version and, with --matmul_peak, the fp32/bf16
matmul GFLOP/s of this process. torch is imported after the flags are read, so `--help` works
in any interpreter.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="regnet_y_400mf", help="torchvision regnet_y_* model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crops", default="2x224,4x96", help="COUNTxSIZE groups, as ours")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile (inductor)")
    ap.add_argument("--optimizer", default="lars", choices=["lars", "sgd"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--prototypes", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=0.6)
    ap.add_argument("--weight_decay", type=float, default=1e-6)
    ap.add_argument("--matmul_peak", action="store_true", help="also time a 2048^3 matmul")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def parse_crops(text):
    """'2x224,4x96' -> [(2, 224), (4, 96)]."""
    return [tuple(int(v) for v in part.split(":")[0].lower().split("x"))
            for part in text.split(",")]


def build_model(torch, torchvision, arch, prototypes, hidden=2048, dim=128):
    """{trunk, head, prototypes}: the trunk returns pooled features (its fc is dropped)."""
    nn = torch.nn
    trunk = getattr(torchvision.models, arch)(weights=None)
    width = trunk.fc.in_features
    trunk.fc = nn.Identity()
    head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim))
    return nn.ModuleDict({"trunk": trunk, "head": head,
                          "prototypes": nn.Linear(dim, prototypes, bias=False)})


def swav_forward(torch, model, inputs):
    """Scores [crops * batch, K]: one trunk pass per run of equal-size crops, one head pass."""
    groups, start = [], 0
    for i in range(1, len(inputs) + 1):
        if i == len(inputs) or inputs[i].shape[-1] != inputs[start].shape[-1]:
            groups.append(torch.cat(inputs[start:i]))
            start = i
    pooled = torch.cat([model["trunk"](x) for x in groups])
    z = torch.nn.functional.normalize(model["head"](pooled), dim=1)
    return model["prototypes"](z)


def sinkhorn(torch, scores, epsilon=0.05, iterations=3):
    """Codes of one crop's [B, K] scores: rows sum to 1 over K, prototypes used equally."""
    q = torch.exp((scores - scores.max()) / epsilon).t()  # K x B; the max cancels below
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).t()


def swav_loss(torch, scores, batch, n_crops, assign=(0, 1), temperature=0.1):
    """Swapped prediction: each assigned crop's codes predicted from every other crop."""
    log_softmax = torch.nn.functional.log_softmax
    total = 0.0
    for i in assign:
        with torch.no_grad():
            q = sinkhorn(torch, scores[i * batch:(i + 1) * batch].detach())
        others = [v for v in range(n_crops) if v != i]
        total = total + sum(-(q * log_softmax(scores[v * batch:(v + 1) * batch] / temperature,
                                              dim=1)).sum(dim=1).mean() for v in others
                            ) / len(others)
    return total / len(assign)


def larc_(torch, params, weight_decay, trust=0.001, eps=1e-8):
    """LARC without clipping, in place on the gradients: g <- (g + wd w) * trust ||w|| /
    (||g|| + wd ||w|| + eps); a tensor whose weight or gradient norm is 0 keeps its gradient."""
    params = [p for p in params if p.grad is not None]
    w_norms = torch._foreach_norm(params)
    g_norms = torch._foreach_norm([p.grad for p in params])
    for p, wn, gn in zip(params, w_norms, g_norms):
        if wn > 0 and gn > 0:
            p.grad.add_(p, alpha=weight_decay).mul_(trust * wn / (gn + weight_decay * wn + eps))


def matmul_peak(torch, dtype, n=2048, reps=10):
    a = torch.randn(n, n).to(dtype)
    torch.mm(a, a)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, a)
        best = min(best, time.perf_counter() - t)
    return round(2 * n**3 / best / 1e9, 1)


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(args):
    import contextlib

    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(torch, torchvision, args.arch, args.prototypes).to(memory_format=layout)
    model.train()
    lars = args.optimizer == "lars"
    sgd = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                          weight_decay=0.0 if lars else args.weight_decay)
    crops = parse_crops(args.crops)
    inputs = [torch.randn(args.batch, 3, s, s).contiguous(memory_format=layout)
              for n, s in crops for _ in range(n)]
    forward = (lambda x: swav_forward(torch, model, x))
    if args.compile:
        forward = torch.compile(forward)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) \
        if args.precision == "bf16" else contextlib.nullcontext

    def step():
        with torch.no_grad():
            w = model["prototypes"].weight
            w.copy_(torch.nn.functional.normalize(w, dim=1))
        with autocast():
            scores = forward(inputs)
        loss = swav_loss(torch, scores.float(), args.batch, len(inputs))
        sgd.zero_grad(set_to_none=True)
        loss.backward()
        if lars:
            larc_(torch, model.parameters(), args.weight_decay)
        sgd.step()
        return loss.item()

    rss_ready = _rss_mib()
    losses = [step() for _ in range(args.warmup)]
    times, cpu0, wall0 = [], time.process_time(), time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t)
    cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    median = statistics.median(times)
    report = {"framework": "pytorch", "arch": args.arch, "crops": args.crops,
              "batch": args.batch, "precision": args.precision,
              "channels_last": args.channels_last, "compile": args.compile,
              "optimizer": args.optimizer, "threads": args.threads,
              "images_per_s": round(args.batch / median, 3),
              "step_s_median": round(median, 3), "step_s_min": round(min(times), 3),
              "cpu_cores_used": round(cpu, 2),
              "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
              "peak_rss_mib": round(peak_rss), "step_peak_mib": round(peak_rss - rss_ready),
              "torch": torch.__version__, "torchvision": torchvision.__version__,
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
    if args.matmul_peak:
        report["matmul_peak_gflops"] = {"float32": matmul_peak(torch, torch.float32)}
        if args.precision == "bf16":
            report["matmul_peak_gflops"]["bfloat16"] = matmul_peak(torch, torch.bfloat16)
    return report


def main(argv=None):
    print(json.dumps(run(parse_args(argv)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
