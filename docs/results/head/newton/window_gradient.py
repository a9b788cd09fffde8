import os, sys, pickle
os.environ.setdefault("JAX_PLATFORMS", "cpu")
CELLS = os.environ.get("HEAD_CELLS", "/tmp/head-newton")  # trained cells (pickles, not committed)
import numpy as np
sys.path.insert(0, "scripts")
from fidelity_study import party
from twinnode.data import frame_to_arrays
from twinnode.generator.layout import Layout
from twinnode.generator.headnoise import head_index
from twinnode.generator.models import row_features
for seed in [int(x) for x in sys.argv[1].split(",")]:
    d = pickle.load(open(f"{CELLS}/{sys.argv[2]}/{seed}.pkl", "rb")); post = d["post"]; s = post.settings
    schema, frame = party(3000, seed); layout = Layout.from_schema(schema); n = post.n
    data = layout.encode(frame_to_arrays(schema, frame))
    X = np.c_[row_features(data, layout, s), np.ones(n)]
    at = head_index(layout, s); w = np.asarray(post.params["auto_loc"], float)[at]
    mu = np.exp(X @ w); y = np.asarray(data.y)
    true = X.T @ (mu - y) / n + np.r_[w[:-1], w[-1] / 6.25] / n
    print(seed, "window g  ", np.round(d["gradient"][at], 3)); print(seed, "true g(w̄)", np.round(true, 3))
    print("   mean y %.3f mean mu %.3f" % (y.mean(), mu.mean()))
