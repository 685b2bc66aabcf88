# Recipe and story BPB per method at the pack's budget (docs/EXPERIMENT.md); values from the eval JSON files.
import json, sys, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
vals = json.load(open(sys.argv[1]))  # {method: [story_bpb or null, recipe_bpb]}
out = sys.argv[2]
ms = list(vals)
fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
x = range(len(ms))
for i, m in enumerate(ms):
    s, r = vals[m]
    if s is not None:
        ax.bar(i - 0.2, s, 0.38, color="#3c6ec8", label="stories valid" if m == next(k for k in ms if vals[k][0] is not None) else None)
        ax.text(i - 0.2, s + 0.02, f"{s:.3f}", ha="center", fontsize=8)
    if r is not None:
        ax.bar(i + 0.2, r, 0.38, color="#f08c28", label="recipes valid" if m == next(k for k in ms if vals[k][1] is not None) else None)
        ax.text(i + 0.2, r + 0.02, f"{r:.3f}", ha="center", fontsize=8)
ax.axhline(vals[ms[0]][0], color="black", ls="--", lw=1)
ax.set_xticks(list(x), ms, fontsize=9)
ax.set_ylabel("bits per byte (q8, lower is better)")
ax.set_title("Recipes added to the story base at the pack's budget (32.8 M tokens)")
ax.legend(loc="upper left", fontsize=8)
ax.spines[["top", "right"]].set_visible(False)
fig.tight_layout()
fig.savefig(out)
