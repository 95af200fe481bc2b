"""Reports of ``nbconv bench`` result files: a markdown table and a PNG.

``nbconv bench report RESULT.json --markdown out.md --png out.png``. A run's report gives GFLOP/s
per case and direction against the machine's FP32 peak and, when the run had a peer, against
PyTorch; a comparison's report is the before/after view (base and new times, the ratio with its
confidence interval, the flag). The PNG needs matplotlib (``pip install 'nbconv[report]'``); the
markdown needs nothing.
"""
from __future__ import annotations

from . import benchstats
from .spec import GRAD_INPUT

_DIR_SHORT = {"forward": "fwd", "grad_input": "bwd-data", "grad_weights": "bwd-filter"}


def _label(row, short=False):
    d = _DIR_SHORT[row["direction"]] if short else row["direction"]
    if row["op"] == "transpose" and row["direction"] == GRAD_INPUT:
        d += "*"
    return f"{row['case']} {d}" if short else d


def _peak(result, peak):
    if peak:
        return float(peak), "given"
    m = result["machine"]
    return float(m["peak_gflops"]), m.get("peak_source", "")


def _header(result, peak):
    m = result["machine"]
    s = result["settings"]
    peak, source = _peak(result, peak)
    threads = m.get("threads", {})
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    load = result.get("load", {})
    lines = [
        (f"Workload `{result['workload']['name']}`, {result['created']}. "
         f"{m['cpu_model']}, {m['cores']} cores, {threads.get('nbconv')} threads "
         f"(Numba layer {threads.get('numba_threading_layer')}); FP32 peak {peak:g} GFLOP/s ({source})."),
        f"Versions: {versions}.",
    ]
    rounds = s.get("repeat")
    if rounds:
        extra = f", batch {s['batch']}" if s.get("batch") else ""
        lines.append(f"{rounds} alternating rounds per case and direction{extra}; "
                     f"load average (1, 5, 15 min) before {_fmt_load(load.get('before'))}, "
                     f"after {_fmt_load(load.get('after'))}.")
    return "\n".join(lines)


def _fmt_load(v):
    if isinstance(v, dict):  # a comparison of two files: base and new loads
        return "; ".join(f"{k} {_fmt_load(x.get('before'))}" for k, x in v.items())
    return "/".join(f"{x:.2f}" for x in v) if v else "n/a"


def markdown(result, peak=None, threshold=benchstats.DEFAULT_THRESHOLD):
    """The report of ``result`` (a validated result document) as markdown."""
    if result["kind"] == "compare":
        return _compare_markdown(result, threshold)
    header = _header(result, peak)
    peak, _ = _peak(result, peak)
    rows = result["rows"]
    has_peer = any(r.get("peer_ms") is not None for r in rows)
    peer = next((k for k in result.get("sides", {}) if k != "nbconv"), "peer")
    head = ["case", "direction", "algorithm", "ms", "GFLOP/s", "% peak"]
    if has_peer:
        head += [f"{peer} ms", f"{peer} GFLOP/s", f"{peer} % peak", f"speed-up vs {peer} [95% CI]"]
    out = [header, "", "| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    for r in rows:
        gflops = r["gflop"] / (r["ms"] * 1e-3) if r.get("gflop") else r["gflops"]
        cells = [r["case"], _label(r), r["algorithm"], f"{r['ms']:.3f}", f"{gflops:.1f}",
                 f"{100 * gflops / peak:.1f}"]
        if has_peer:
            if r.get("peer_ms") is not None:
                pg = r["gflop"] / (r["peer_ms"] * 1e-3) if r.get("gflop") else r.get("peer_gflops") or 0
                ci = f" [{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}]" if r.get("ratio_lo") else ""
                cells += [f"{r['peer_ms']:.3f}", f"{pg:.1f}", f"{100 * pg / peak:.1f}",
                          f"{r['ratio']:.2f}x{ci}"]
            else:
                cells += ["-"] * 4
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    g = benchstats.geomean([r["gflop"] / (r["ms"] * 1e-3) for r in rows if r.get("gflop")])
    if g:
        out.append(f"Geometric mean: {g:.1f} GFLOP/s ({100 * g / peak:.1f} % of peak) over {len(rows)} rows.")
    if has_peer:
        gr = benchstats.geomean([r["ratio"] for r in rows if r.get("ratio")])
        out.append(f"Geometric mean speed-up vs {peer} ({peer} ms / nbconv ms, > 1: nbconv faster): "
                   f"{gr:.2f}x.")
    if any(r["op"] == "transpose" for r in rows):
        out.append("\\* transposed convolution: grad_input of the stored problem is the transpose's forward.")
    return "\n".join(out) + "\n"


def _compare_markdown(result, threshold):
    rows = result["rows"]
    s = result["settings"]
    threshold = s.get("threshold", threshold)
    sides = result.get("sides", {})

    def name(k):
        side = sides.get(k, {})
        return side.get("rev") or side.get("file") or side.get("path") or k

    head = ["case", "direction", "base algorithm", "new algorithm", "base ms", "new ms",
            "new / base", f"{round(100 * (rows[0]['confidence'] if rows else 0.95))}% CI", "flag"]
    out = [_header(result, None), "",
           (f"Base: `{name('base')}`; new: `{name('new')}`. Ratio = new time / base time "
            f"(> 1: slower), median of the per-round ratios; "
            f"flagged when the whole interval lies above {threshold:g}."), "",
           "| " + " | ".join(head) + " |",
           "|" + "|".join("---" if i < 4 else "---:" for i in range(len(head))) + "|"]
    if s.get("force_algo"):
        forced = ", ".join(f"{k}={v}" for k, v in s["force_algo"].items())
        out[2] += f" Forced on the new side (a deliberate slowdown, to check the gate): {forced}."
    for r in rows:
        flag = {"regression": "**REGRESSION**", "improvement": "improvement"}.get(r["flag"], "")
        out.append("| " + " | ".join([
            r["case"], _label(r), r["base_algorithm"], r["new_algorithm"], f"{r['base_ms']:.3f}",
            f"{r['new_ms']:.3f}", f"{r['ratio']:.3f}", f"[{r['lo']:.3f}, {r['hi']:.3f}]", flag,
        ]) + " |")
    regressions = sum(r["flag"] == "regression" for r in rows)
    g = benchstats.geomean([r["ratio"] for r in rows])
    out.append("")
    if g:
        out.append(f"Geometric mean new/base: {g:.3f}; {regressions} regression(s) flagged.")
    return "\n".join(out) + "\n"


def write_markdown(result, path, peak=None, threshold=benchstats.DEFAULT_THRESHOLD):
    with open(path, "w") as f:
        f.write(markdown(result, peak, threshold))


def write_png(result, path, peak=None, threshold=benchstats.DEFAULT_THRESHOLD):
    """Plot ``result`` into ``path``: % of peak per case and direction (and the peer's) for a run,
    the ratio with its interval per case and direction for a comparison."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the PNG report needs matplotlib: pip install 'nbconv[report]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [_label(r, short=True) for r in rows]
    height = max(2.5, 0.19 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=90)
    ys = list(range(len(rows)))[::-1]
    if result["kind"] == "compare":
        threshold = result["settings"].get("threshold", threshold)
        for y, r in zip(ys, rows):
            color = {"regression": "tab:red", "improvement": "tab:green"}.get(r["flag"], "tab:blue")
            ax.errorbar(r["ratio"], y, xerr=[[r["ratio"] - r["lo"]], [r["hi"] - r["ratio"]]],
                        fmt="o", color=color, ms=4, capsize=2, lw=1)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.axvline(threshold, color="tab:red", lw=0.8, ls="--", label=f"threshold {threshold:g}")
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        conf = round(100 * rows[0]["confidence"]) if rows else 95
        ax.set_xlabel(f"time new / base (median of round ratios, {conf}% interval; > 1: slower)")
        ax.legend(loc="lower right", fontsize=7)
    else:
        peak, _ = _peak(result, peak)
        has_peer = any(r.get("peer_ms") is not None for r in rows)
        h = 0.4 if has_peer else 0.7
        ours = [100 * r["gflop"] / (r["ms"] * 1e-3) / peak for r in rows]
        ax.barh([y + (h / 2 if has_peer else 0) for y in ys], ours, height=h, color="tab:blue", label="nbconv")
        if has_peer:
            peer = next((k for k in result.get("sides", {}) if k != "nbconv"), "peer")
            theirs = [100 * r["gflop"] / (r["peer_ms"] * 1e-3) / peak if r.get("peer_ms") else 0
                      for r in rows]
            ax.barh([y - h / 2 for y in ys], theirs, height=h, color="tab:orange", label=peer)
        ax.set_xlabel(f"% of FP32 peak ({peak:g} GFLOP/s)")
        ax.legend(loc="lower right", fontsize=7)
        ax.grid(axis="x", lw=0.3)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=6.5)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    m = result["machine"]
    ax.set_title(f"nbconv bench {result['kind']}: {result['workload']['name']} on {m['cpu_model']}, "
                 f"{m['threads'].get('nbconv')} threads", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
