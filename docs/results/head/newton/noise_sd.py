"""Per term, over the cached seeds: the head's Polyak noise sd with the party's own Fisher information
against the release's (the mixture's synthetic rows), both in the party's HC1 SEs."""
import os, sys, pickle, glob
os.environ.setdefault("JAX_PLATFORMS", "cpu")
CELLS = os.environ.get("HEAD_CELLS", "/tmp/head-newton")
import numpy as np
sys.path.insert(0, "scripts")
from fidelity_study import party
import statsmodels.api as sm
from twinnode.data import frame_to_arrays
from twinnode.generator.layout import Layout
from twinnode.generator.headnoise import head_index, head_information, head_noise_cov
from twinnode.generator.models import row_features
from twinnode.generator.trace import TraceTail
label = sys.argv[1] if len(sys.argv) > 1 else "cache"
real_sd, rel_sd, err = [], [], []
for f in sorted(glob.glob(f"{CELLS}/{label}/*.pkl")):
    seed = int(os.path.basename(f)[:-4]); post = pickle.load(open(f, "rb"))["post"]; s = post.settings; n = post.n; c = post.calibration
    schema, frame = party(3000, seed); layout = Layout.from_schema(schema)
    data = layout.encode(frame_to_arrays(schema, frame)); y = np.asarray(data.y)
    X = np.c_[row_features(data, layout, s), np.ones(n)]
    fr = sm.GLM(y, X, family=sm.families.Poisson()).fit(cov_type="HC1")
    at = head_index(layout, s); w = np.asarray(post.params["auto_loc"], float)[at]
    mu = np.exp(X @ w); Ir = (X * mu[:, None]).T @ X
    W = TraceTail(c.steps, s.average).steps
    real_sd.append(np.sqrt(np.diag(head_noise_cov(Ir, c.sigma, s.clip, c.q, 1.0, W))) / fr.bse)
    rel_sd.append(np.sqrt(np.diag(head_noise_cov(head_information(post.params, layout, n, s), c.sigma, s.clip, c.q, 1.0, W))) / fr.bse)
    err.append((w - fr.params) / fr.bse)
names = list(layout.feature_names) + ["Intercept"]
R, S, E = map(np.array, (real_sd, rel_sd, err))
print("seeds", len(R), "| per term, medians over seeds, in the party's HC1 SEs")
print("%-10s %8s %8s %6s %10s %10s" % ("term", "sd real", "sd rel.", "ratio", "|err| med", "err/sd_real rms"))
for j, t in enumerate(names):
    print("%-10s %8.2f %8.2f %6.2f %10.2f %10.2f" % (t, np.median(R[:, j]), np.median(S[:, j]), np.median(R[:, j] / S[:, j]), np.median(np.abs(E[:, j])), np.sqrt(np.mean((E[:, j] / R[:, j]) ** 2))))
