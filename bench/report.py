"""Render committed benchmark results (bench/results/*.json) into README.md's table and a plot.

    python bench/report.py                       # README.md table + bench/results/similarity_loss_vs_grid.png
    python bench/report.py --results DIR --summary DIR/summary.md --no-readme

Per device file and per (op, shape, dtype, mode): the naive PyTorch time (provider `naive` when a suite has
one, else `torch`, the reference), the fastest pscfast backend (cpp, triton; `pscfast` for the training step), the speed-up, both peak memories and their
ratio, and on a GPU the fraction of the device's copy bandwidth (ops with `min_bytes`) or matrix rate (ops
with `min_flops`) measured in the same run (bench/ceilings.py). A second table per device compares the other
implementations a suite measured (peer packages, the F.unfold version) with pscfast, and a third sets each
provider's half-precision times against its float32 times at the same op, shape and mode. A record that names
the backend the dispatcher chose (`backend`) shows it after the provider.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
BASELINES = ("naive", "torch")
OURS = ("cpp", "triton", "pscfast")  # other providers (unfold, peers) are comparisons, never "ours"


def load(results_dir: Path) -> list[dict]:
    """Every result file under results_dir, newest device files only (one per device name)."""
    runs = {}
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if "meta" in data and "results" in data:
            data["path"] = path
            runs[data["meta"]["device"]] = data
    return list(runs.values())


def _mib(b):
    return f"{b / 2**20:,.1f}" if b is not None else "-"


def _label(rec: dict) -> str:
    """The provider, and the backend it ran on when the record names one (pscfast's default dispatch)."""
    backend = rec.get("backend")
    return f"{rec['provider']}: {backend}" if backend and backend != rec["provider"] else rec["provider"]


def _rate_fraction(rec: dict, ceilings: dict, dtype: str) -> str:
    if not ceilings:
        return "-"
    flops = rec.get("min_flops")
    if flops:
        key = {"bfloat16": "bf16_flop_per_s", "float16": "fp16_flop_per_s"}.get(dtype, "fp32_flop_per_s")
        if key in ceilings:
            return f"{100 * flops / rec['median_s'] / ceilings[key]:.0f}% of matmul"
    if rec.get("min_bytes"):
        return f"{100 * rec['min_bytes'] / rec['median_s'] / ceilings['copy_bytes_per_s']:.0f}% of copy"
    return "-"


def _cases(run: dict):
    """(op, shape, dtype, mode), {provider: record}, the fastest pscfast record; cases pscfast did not run are
    left out."""
    groups = defaultdict(dict)
    for rec in run["results"]:
        groups[(rec["op"], rec["shape"], rec["dtype"], rec["mode"])][rec["provider"]] = rec
    for key, recs in sorted(groups.items()):
        ours = [r for p, r in recs.items() if p in OURS and r["median_s"] is not None]
        if ours:
            yield key, recs, min(ours, key=lambda r: r["median_s"])


def table(run: dict) -> str:
    """One markdown table for one device's run."""
    meta = run["meta"]
    gpu = meta.get("device_type") == "cuda"
    lines = [
        f"**{meta['device']}** (torch {meta['versions']['torch']}, git {meta['git_revision']}, {meta['date']}; "
        f"`{run['path'].relative_to(ROOT) if run['path'].is_relative_to(ROOT) else run['path']}`)",
        "",
        "| op | shape | dtype | mode | naive ms | pscfast ms (backend) | speed-up | naive MiB | pscfast MiB "
        "| memory ratio |" + (" roofline |" if gpu else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for (op, shape, dtype, mode), recs, best in _cases(run):
        base = next((recs[b] for b in BASELINES if b in recs), None)
        if base and base["median_s"] is None:  # the naive version ran out of memory at this shape
            lines.append(f"| {op} | {shape} | {dtype} | {mode} | out of memory | "
                         f"{best['median_s'] * 1e3:.3f} ({_label(best)}) | - | - | {_mib(best.get('peak_bytes'))} "
                         f"| - |" + (f" {_rate_fraction(best, meta.get('ceilings', {}), dtype)} |" if gpu else ""))
            continue
        speed = f"{base['median_s'] / best['median_s']:.2f}x" if base else "-"
        mem = "-"
        if base and base.get("peak_bytes") is not None and best.get("peak_bytes") is not None:
            # below 1 MiB the measurement is page noise: say so instead of printing a huge ratio
            mem = (f"{base['peak_bytes'] / best['peak_bytes']:.1f}x" if best["peak_bytes"] >= 2**20
                   else "pscfast < 1 MiB")
        row = (f"| {op} | {shape} | {dtype} | {mode} | "
               f"{base['median_s'] * 1e3:.3f} | " if base else f"| {op} | {shape} | {dtype} | {mode} | - | ")
        row += (f"{best['median_s'] * 1e3:.3f} ({_label(best)}) | {speed} | "
                f"{_mib(base.get('peak_bytes') if base else None)} | {_mib(best.get('peak_bytes'))} | {mem} |")
        if gpu:
            row += f" {_rate_fraction(best, meta.get('ceilings', {}), dtype)} |"
        lines.append(row)
    return "\n".join(lines)


def peer_table(run: dict) -> str | None:
    """Other implementations measured in the same run (spatial_correlation_sampler, localcorr, an F.unfold
    version) against the fastest pscfast backend; None when the run has none."""
    lines = []
    for (op, shape, dtype, mode), recs, best in _cases(run):
        for peer, rec in sorted(recs.items()):
            if peer in OURS or peer in BASELINES or rec["median_s"] is None:
                continue
            lines.append(f"| {op} | {shape} | {dtype} | {mode} | {peer} | {rec['median_s'] * 1e3:.3f} | "
                         f"{best['median_s'] * 1e3:.3f} ({_label(best)}) | "
                         f"{rec['median_s'] / best['median_s']:.2f}x | {_mib(rec.get('peak_bytes'))} | "
                         f"{_mib(best.get('peak_bytes'))} |")
    if not lines:
        return None
    return "\n".join([f"Other implementations, same run ({run['meta']['device']}):", "",
                      "| op | shape | dtype | mode | peer | peer ms | pscfast ms (backend) | pscfast speed-up "
                      "| peer MiB | pscfast MiB |", "|---|---|---|---|---|---|---|---|---|---|"] + lines)


def dtype_table(run: dict) -> str | None:
    """Each provider's time in bfloat16 or float16 over its own float32 time at the same op, shape and mode
    (a call that falls back to a slow path shows as a large ratio); None when the run has no such pair."""
    groups = defaultdict(dict)
    for rec in run["results"]:
        if rec["median_s"] is not None:
            groups[(rec["op"], rec["shape"], rec["mode"], rec["provider"])][rec["dtype"]] = rec
    lines = []
    for (op, shape, mode, _), recs in sorted(groups.items()):
        base = recs.get("float32")
        for dtype in ("bfloat16", "float16"):
            if base and dtype in recs:
                rec = recs[dtype]
                lines.append(f"| {op} | {shape} | {mode} | {_label(rec)} | {dtype} | {rec['median_s'] * 1e3:.3f} | "
                             f"{base['median_s'] * 1e3:.3f} ({_label(base)}) | "
                             f"{rec['median_s'] / base['median_s']:.2f}x |")
    if not lines:
        return None
    return "\n".join([f"Half precision against float32, same run ({run['meta']['device']}):", "",
                      "| op | shape | mode | provider | dtype | ms | float32 ms | time ratio |",
                      "|---|---|---|---|---|---|---|---|"] + lines)


def plot_similarity(runs: list[dict], out: Path) -> Path | None:
    """Time of forward+backward per sample against grid size, reference vs fused similarity loss, per device
    (per sample because the batch of a suite shrinks where the naive version runs out of memory)."""
    points = defaultdict(list)
    for run in runs:
        for rec in run["results"]:
            grid, batch = re.search(r"g(\d+)", rec["shape"]), re.search(r"B(\d+)", rec["shape"])
            if rec["op"] == "similarity_loss" and rec["mode"] == "fwd+bwd" and grid and batch and rec["median_s"]:
                family = re.sub(r"-?[gB]\d+", "", rec["shape"]).strip("-")
                label = f"{rec['provider']} {family} {rec['dtype']} ({run['meta']['device'][:28]})"
                points[label].append((int(grid.group(1)), rec["median_s"] * 1e3 / int(batch.group(1))))
    if not points:
        return None
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, pts in sorted(points.items()):
        xs, ys = zip(*sorted(pts))
        naive = label.split()[0] in BASELINES
        ax.plot(xs, ys, "--o" if naive else "-o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("feature grid size g (g x g positions)")
    ax.set_ylabel("forward + backward, ms per sample (median / batch)")
    ax.set_title("Weighted similarity loss: naive reference vs fused")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--summary", type=Path, help="also write the tables to this markdown file")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md unchanged")
    args = parser.parse_args(argv)

    runs = load(args.results)
    if not runs:
        raise SystemExit(f"no benchmark result files in {args.results}")
    runs.sort(key=lambda r: r["meta"].get("device_type") != "cuda")  # GPUs first
    body = "\n\n".join("\n\n".join(t for t in (table(r), peer_table(r), dtype_table(r)) if t) for r in runs)
    plot = plot_similarity(runs, args.results / "similarity_loss_vs_grid.png")
    if plot:
        rel = plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot
        body += f"\n\n![similarity loss time against grid size]({rel})"
    if args.summary:
        args.summary.write_text(body + "\n")
    if not args.no_readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        if START not in text or END not in text:
            raise SystemExit(f"README.md has no {START} ... {END} block")
        head, rest = text.split(START, 1)
        readme.write_text(head + START + "\n" + body + "\n" + END + rest.split(END, 1)[1])
    print(body)


if __name__ == "__main__":
    main()
