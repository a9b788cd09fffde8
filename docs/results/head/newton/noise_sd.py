"""Per term, over the cached seeds: the head's Polyak noise sd with the party's own Fisher information
against the release's: from the mixture's synthetic rows as drawn (`sd rel.`) and from the same rows
calibrated to the release's noisy marginals (`sd cal.`), all in the party's HC1 SEs."""
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
from twinnode.generator.marginals import Marginals
label = sys.argv[1] if len(sys.argv) > 1 else "cache"
real_sd, rel_sd, cal_sd, err = [], [], [], []
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
    Ic = head_information(post.params, layout, n, s, marginals=Marginals.from_dict(post.marginals))
    cal_sd.append(np.sqrt(np.diag(head_noise_cov(Ic, c.sigma, s.clip, c.q, 1.0, W))) / fr.bse)
    err.append((w - fr.params) / fr.bse)
names = list(layout.feature_names) + ["Intercept"]
R, S, C, E = map(np.array, (real_sd, rel_sd, cal_sd, err))
print("seeds", len(R), "| per term, medians over seeds, in the party's HC1 SEs")
print("%-10s %8s %8s %6s %8s %6s %10s %10s %10s" % ("term", "sd real", "sd rel.", "ratio", "sd cal.", "ratio", "|err| med", "err/sd_real rms", "err/sd_cal rms"))
for j, t in enumerate(names):
    print("%-10s %8.2f %8.2f %6.2f %8.2f %6.2f %10.2f %10.2f %10.2f" % (t, np.median(R[:, j]), np.median(S[:, j]), np.median(R[:, j] / S[:, j]), np.median(C[:, j]), np.median(R[:, j] / C[:, j]), np.median(np.abs(E[:, j])), np.sqrt(np.mean((E[:, j] / R[:, j]) ** 2)), np.sqrt(np.mean((E[:, j] / C[:, j]) ** 2))))
# a release's 95% interval, roughly: the head's noise and one real SE of sampling, in quadrature
for lab, V in (("real", R), ("rel.", S), ("cal.", C)):
    print("inside 1.96 sqrt(sd_%s^2 + 1): %.2f of (seed, term)" % (lab, np.mean(np.abs(E) <= 1.96 * np.sqrt(V ** 2 + 1))))
