"""umap-learn's map of a fixed dataset, the reference for the viewer's own UMAP.

Makes 600 points in 32-d (10 Gaussian clusters of different spreads, rows scaled to unit
length as the viewer does), maps them with umap-learn's defaults (n_neighbors=15, min_dist=0.1)
and scores the map as viewer/tests/umap_reference.rs scores ours: the mean fraction of each
point's 10 nearest neighbours kept on the map, and how often a point's nearest neighbour on
the map has its label. Writes the data and the scores to viewer/tests/fixtures/umap_reference.json.

    pip install umap-learn   # 0.5.x
    python3 bench/umap_reference.py
"""

import json
import os
import sys

import numpy as np

sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.getcwd()]
import umap  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "viewer", "tests", "fixtures", "umap_reference.json")


def data(seed=7, clusters=10, per=60, dim=32):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    rows, labels = [], []
    for c in range(clusters):
        spread = 0.3 + 0.7 * c / (clusters - 1)
        rows.append(centres[c] + rng.normal(scale=spread, size=(per, dim)))
        labels += [c] * per
    x = np.concatenate(rows).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, np.array(labels)


def knn(x, k):
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def preservation(x, y, k=10):
    high, low = knn(x.astype(np.float64), k), knn(y.astype(np.float64), k)
    return float(np.mean([len(set(h) & set(l)) / k for h, l in zip(high, low)]))


def agreement(y, labels):
    nearest = knn(y.astype(np.float64), 1)[:, 0]
    return float(np.mean(labels[nearest] == labels))


def main():
    x, labels = data()
    scores = []
    for seed in range(5):
        y = umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed).fit_transform(x)
        scores.append((preservation(x, y), agreement(y, labels)))
    p = [s[0] for s in scores]
    a = [s[1] for s in scores]
    out = {
        "about": "bench/umap_reference.py: umap-learn's defaults on this data, 5 seeds",
        "umap_learn": umap.__version__,
        "dim": int(x.shape[1]),
        "labels": labels.tolist(),
        "rows": [round(float(v), 6) for v in x.ravel()],
        "preservation_k10": {"mean": float(np.mean(p)), "min": float(np.min(p))},
        "label_agreement": {"mean": float(np.mean(a)), "min": float(np.min(a))},
    }
    with open(OUT, "w") as f:
        json.dump(out, f)
    print(json.dumps({k: v for k, v in out.items() if k not in ("rows", "labels")}))


if __name__ == "__main__":
    main()
