# Joint training vs the base and its pack (and separate generic-tokenizer models), equal bytes per domain
# (docs/EXPERIMENT.md); values from eval JSON: {"rows": [[label, story_q8, recipe_q8], ...], "title": str}
import json, sys, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
v = json.load(open(sys.argv[1]))
rows = v["rows"]
colors = ["#3c6ec8", "#f08c28", "#8c8c8c", "#55a868"]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=100)
for ax, (dom, k) in zip(axes, [("stories valid", 1), ("recipes valid", 2)]):
    vals = [(r[0], r[k]) for r in rows if r[k] is not None]
    lo, hi = min(x for _, x in vals) * 0.97, max(x for _, x in vals) * 1.015
    for i, (lab, val) in enumerate(vals):
        ax.bar(i, val, 0.6, color=colors[i % len(colors)])
        ax.text(i, val + (hi - lo) * 0.03, f"{val:.4f}", ha="center", fontsize=8)
    ax.set_ylim(lo, hi + (hi - lo) * 0.12)
    ax.set_xticks(range(len(vals)), [l for l, _ in vals], fontsize=7)
    ax.set_title(dom, fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
axes[0].set_ylabel("valid bits per byte, q8 (lower is better;\naxis cut, not from 0)")
fig.suptitle(v["title"], fontsize=10)
fig.tight_layout()
fig.savefig(sys.argv[2])
