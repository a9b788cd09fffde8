import os, sys, pickle, glob
os.environ.setdefault("JAX_PLATFORMS", "cpu")
CELLS = os.environ.get("HEAD_CELLS", "/tmp/head-newton")  # trained cells (pickles, not committed)
import numpy as np
sys.path.insert(0, "scripts")
from fidelity_study import party
import statsmodels.api as sm
from twinnode.data import frame_to_arrays
from twinnode.generator.layout import Layout
from twinnode.generator.headnoise import head_index, head_information, head_noise_cov
from twinnode.generator.models import row_features
from twinnode.generator.trace import TraceTail
taus = [float(t) for t in sys.argv[1].split(",") if t]
label = sys.argv[2] if len(sys.argv) > 2 else "cache"
res = {}
for f in sorted(glob.glob(f"{CELLS}/{label}/*.pkl")):
    seed = int(os.path.basename(f)[:-4]); d = pickle.load(open(f, "rb")); post = d["post"]
    schema, frame = party(3000, seed); layout = Layout.from_schema(schema); s = post.settings; n = post.n
    data = layout.encode(frame_to_arrays(schema, frame))
    X = np.c_[row_features(data, layout, s), np.ones(n)]
    fr = sm.GLM(np.asarray(data.y), X, family=sm.families.Poisson()).fit(cov_type="HC1")
    mle, se = fr.params, fr.bse
    at = head_index(layout, s); w = np.asarray(post.params["auto_loc"], float)[at]
    I = head_information(post.params, layout, n, s) + np.diag(np.r_[np.ones(len(at)-1), 1/6.25])
    c = post.calibration
    sg2 = (c.sigma * s.clip / c.q) ** 2 / TraceTail(c.steps, s.average).steps
    G = n * d["gradient"][at]
    hn = np.sqrt(np.diag(head_noise_cov(I, c.sigma, s.clip, c.q, 1.0, TraceTail(c.steps, s.average).steps)))
    from twinnode.generator.marginals import Marginals
    Ic = head_information(post.params, layout, n, s, marginals=Marginals.from_dict(post.marginals)) + np.diag(np.r_[np.ones(len(at)-1), 1/6.25])
    v = {"raw": w, "newton": w - np.linalg.solve(I, G), "newtonC": w - np.linalg.solve(Ic, G)}
    for tau in taus:
        v[f"tau{tau}"] = w - np.linalg.solve(I @ I + sg2 / tau**2 * np.eye(len(at)), I @ G)
    names = list(layout.feature_names) + ["Int"]
    res[seed] = {k: (x - mle) / se for k, x in v.items()}
    res[seed]["hn"] = hn / se
    j = list(layout.feature_names).index("disea")
    mu = np.exp(X @ w); Ir = (X * mu[:, None]).T @ X
    print(seed, "disea raw %.2f newton %.2f mle %.2f se %.3f | Isyn %.0f Ireal %.0f | newton-realI %.2f Icalib %.0f" % (w[j], v["newton"][j], mle[j], se[j], I[j,j], Ir[j,j], (w - np.linalg.solve(Ir, G))[j], Ic[j,j]))
print("terms", names)
for k in res[next(iter(res))]:
    Z = np.array([res[s][k] for s in res])
    if k == "hn":
        print("%-9s noise sd/se median" % k, np.round(np.median(Z, 0), 2)); continue
    print("%-9s med|z| %s  worst-term %.2f  mean z %s" % (k, np.round(np.median(np.abs(Z), 0), 2), np.median(np.abs(Z), 0).max(), np.round(Z.mean(0), 1)))
print("disea per seed: raw newton mle  (z raw, z newton)")
