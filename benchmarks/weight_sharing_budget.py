"""Mixed precision under a size budget vs uniform bits of the same size, and the size-accuracy curve (ConvNet3).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks weight_sharing_budget --data-dir ../shared/data --seeds 0 1 2

Per seed (one thread by default): ConvNet3 (five weight tensors, 241,770 parameters) trained dense on MNIST for
``--epochs`` epochs; then post-training weight sharing of its five weight tensors, every other tensor stored
float16, in the ``.lws`` format:

- **uniform**: every layer at ``b`` bits (``--uniform-bits``, each a row), the artifact's exact size ``S``;
- **mixed**: per-layer bits chosen for the budget ``S`` by
  :func:`~lightning_optim.functional.weight_sharing.budget.fit_budget` with HAWQ-V2 Hessian traces
  (:func:`~lightning_optim.functional.weight_sharing.budget.hessian_traces`, 4 training batches of 256);
- **mixed, smaller**: the same search for ``S / 1.3`` (the issue's "equal accuracy at >= 1.3x smaller").

Test accuracy on the 10,000 MNIST test images; the accuracy difference mixed - uniform per seed, its mean and
worst over the seeds. Then the size-accuracy curve of the last seed over ``--curve`` budgets (bytes): the table,
and a PNG (``--plot``). No fine-tuning here (post-training sharing: the comparison of the plans themselves;
:class:`~lightning_optim.callbacks.WeightSharing` trains the centroids after).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn

NAMES = [
    "features.block1.conv.weight",
    "features.block2.conv.weight",
    "features.block3.conv.weight",
    "classifier.fc1.weight",
    "classifier.fc2.weight",
]


def _data(data_dir: str):
    from lightning_optim.data import ImageClassificationDataModule

    dm = ImageClassificationDataModule("mnist", data_dir=data_dir, batch_size=256)
    dm.setup("fit")
    dm.setup("test")
    return dm


def _train(dm, seed: int, epochs: int) -> nn.Module:
    from lightning_optim.models import ConvNet3

    torch.manual_seed(seed)
    model = ConvNet3()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    x_all = torch.cat([dm.to_model_input(b[0]) for b in dm.train_dataloader()])
    y_all = torch.cat([b[1] for b in dm.train_dataloader()])
    steps = epochs * (len(x_all) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_all), generator=g)
        for i in range(0, len(x_all) - 255, 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
            opt.step()
            sched.step()
    return model.eval(), (x_all[:1024], y_all[:1024])


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(
            sum(
                int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
                for i in range(0, len(x), 1000)
            )
            / len(x)
        )


def _shared_copy(
    model: nn.Module, bits: dict[str, int], sparsity: dict[str, float] | None = None
) -> nn.Module:
    from lightning_optim.functional.weight_sharing.budget import clustered

    out = type(model)()
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        state = out.state_dict(keep_vars=True)
        for name, b in bits.items():
            state[name].copy_(clustered(state[name].detach(), b, (sparsity or {}).get(name, 0.0)))
    return out.eval()


def _size(model: nn.Module) -> int:
    from lightning_optim.functional.weight_sharing.budget import artifact_bytes

    return artifact_bytes(model.state_dict(), codebook_dtype="float16", other_dtype="float16")


def main(argv: list[str] | None = None) -> None:
    from lightning_optim.functional.weight_sharing.budget import BudgetError, fit_budget, hessian_traces

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--uniform-bits", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--curve", type=int, nargs="+", default=[10_000, 20_000, 30_000, 50_000, 80_000])
    parser.add_argument(
        "--curve-sparsities",
        type=float,
        nargs="*",
        default=[0.5, 0.7, 0.8, 0.9, 0.95],
        help="extra per-layer sparsities the curve's search may choose (magnitude, post-training)",
    )
    parser.add_argument(
        "--curve-only", action="store_true", help="train the last seed and draw the curve only"
    )
    parser.add_argument("--plot", default=None, help="PNG of the size-accuracy curve")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"# weight sharing under a budget, ConvNet3 on MNIST: torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.machine()}, load average at start {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    dm = _data(args.data_dir)
    x_test = torch.cat([dm.to_model_input(b[0]) for b in dm.test_dataloader()])
    y_test = torch.cat([b[1] for b in dm.test_dataloader()])
    rows, gains, smaller = [], {b: [] for b in args.uniform_bits}, {b: [] for b in args.uniform_bits}
    model = None
    for seed in args.seeds[-1:] if args.curve_only else args.seeds:
        started = time.perf_counter()
        model, (xc, yc) = _train(dm, seed, args.epochs)
        dense_acc = _accuracy(model, x_test, y_test)

        def loss(m, batch):
            return nn.functional.cross_entropy(m(batch[0]), batch[1])

        batches = [(xc[i : i + 256], yc[i : i + 256]) for i in range(0, 1024, 256)]
        traces = hessian_traces(
            model, loss, batches, NAMES, samples=4, generator=torch.Generator().manual_seed(seed)
        )
        for b in [] if args.curve_only else args.uniform_bits:
            uniform = _shared_copy(model, {n: b for n in NAMES})
            size = _size(uniform)
            u_acc = _accuracy(uniform, x_test, y_test)
            plan = fit_budget(
                model, NAMES, size, traces=traces, codebook_dtype="float16", other_dtype="float16"
            )
            mixed = _shared_copy(model, plan.bits)
            m_acc, m_size = _accuracy(mixed, x_test, y_test), _size(mixed)
            try:
                plan_s = fit_budget(
                    model,
                    NAMES,
                    int(size / 1.3),
                    traces=traces,
                    codebook_dtype="float16",
                    other_dtype="float16",
                )
                mixed_s = _shared_copy(model, plan_s.bits)
                s_acc, s_size, s_bits = _accuracy(mixed_s, x_test, y_test), _size(mixed_s), plan_s.bits
            except BudgetError:
                s_acc, s_size, s_bits = float("nan"), 0, {}
            gains[b].append(100 * (m_acc - u_acc))
            smaller[b].append(100 * (s_acc - u_acc))
            rows.append((seed, b, dense_acc, size, u_acc, m_size, m_acc, plan.bits, s_size, s_acc, s_bits))
            print(
                f"seed {seed}, {b} bits: uniform {size:,} B {100 * u_acc:.2f}% | mixed {m_size:,} B "
                f"{100 * m_acc:.2f}% {list(plan.bits.values())} | mixed at size/1.3 {s_size:,} B {100 * s_acc:.2f}% "
                f"{list(s_bits.values())} (dense {100 * dense_acc:.2f}%, {time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    print(
        "\n| seed | uniform bits | dense acc | uniform B | uniform acc | mixed B | mixed acc | mixed bits (conv1, conv2, conv3, fc1, fc2) | mixed at 1/1.3 B | its acc | its bits |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for seed, b, d, us, ua, ms, ma, mb, ss, sa, sb in rows:
        print(
            f"| {seed} | {b} | {100 * d:.2f}% | {us:,} | {100 * ua:.2f}% | {ms:,} | {100 * ma:.2f}% | "
            f"{list(mb.values())} | {ss:,} | {100 * sa:.2f}% | {list(sb.values())} |"
        )
    print(
        "\n| uniform bits | mixed - uniform, same size: mean | worst | mixed at 1/1.3 of the size - uniform: mean | worst |"
    )
    print("|---:|---:|---:|---:|---:|")
    for b in [] if args.curve_only else args.uniform_bits:
        print(
            f"| {b} | {statistics.mean(gains[b]):+.2f} pt | {min(gains[b]):+.2f} pt | "
            f"{statistics.mean(smaller[b]):+.2f} pt | {min(smaller[b]):+.2f} pt |"
        )
    # the size-accuracy curve of the last seed's network
    print(
        f"\n## Size-accuracy curve (seed {args.seeds[-1]}, post-training: per-layer bits and sparsity chosen per "
        f"budget, sparsities from {args.curve_sparsities})\n"
    )
    print("| budget B | artifact B | ratio vs dense fp32 | test acc | bits | sparsity |")
    print("|---:|---:|---:|---:|---|---|")
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    dense = len(buf.getvalue())
    curve = []
    for budget in args.curve:
        try:
            plan = fit_budget(
                model,
                NAMES,
                budget,
                sparsities=args.curve_sparsities,
                traces=traces,
                codebook_dtype="float16",
                other_dtype="float16",
            )
        except BudgetError as err:
            print(f"| {budget:,} | - | - | - | {str(err)[:80]}... | |")
            continue
        shared = _shared_copy(model, plan.bits, plan.sparsity)
        size, acc = _size(shared), _accuracy(shared, x_test, y_test)
        curve.append((size, acc))
        sparsity = [round(v, 2) for v in plan.sparsity.values()]
        print(
            f"| {budget:,} | {size:,} | {dense / size:.1f}x | {100 * acc:.2f}% | {list(plan.bits.values())} | "
            f"{sparsity} |"
        )
    if args.plot and curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([s / 1000 for s, _ in curve], [100 * a for _, a in curve], marker="o")
        ax.set_xlabel("artifact size (kB)")
        ax.set_ylabel("MNIST test accuracy (%)")
        ax.set_title("ConvNet3: size-accuracy under a budget")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nplot: {args.plot}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
