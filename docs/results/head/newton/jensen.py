import os, sys
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np
sys.path.insert(0, "scripts")
from fidelity_study import party
import statsmodels.api as sm
from twinnode.data import frame_to_arrays
from twinnode.generator.accounting import calibrate_split
from twinnode.generator.layout import Layout
from twinnode.generator.settings import GeneratorSettings, TrainPlan
from twinnode.generator.train import fit
from twinnode.generator.marginals import measure
from twinnode.generator.anchor import anchored_start
from twinnode.generator.headnoise import head_index, head_information, synthetic_design
from twinnode.generator.models import row_features
from twinnode.generator.dpsvi import LOC, SCALE
for seed in [int(x) for x in sys.argv[1].split(",")]:
    schema, frame = party(3000, seed); n = len(frame); layout = Layout.from_schema(schema); s = GeneratorSettings()
    plan = TrainPlan(epsilon=1.0)
    cal = calibrate_split(1.0, 1/n, n, plan.q, plan.steps(), plan.batching, plan.share())
    data = layout.encode(frame_to_arrays(schema, frame))
    marg = measure(data, layout, cal.marginal_multiplier, seed + 1)
    res = fit(data, layout, cal, s, seed + 1, None, anchored_start(layout, s, marg))
    at = head_index(layout, s); w = np.asarray(res.params[LOC], float)[at]
    X = np.c_[row_features(data, layout, s), np.ones(n)]; y = np.asarray(data.y)
    fr = sm.GLM(y, X, family=sm.families.Poisson()).fit(cov_type="HC1")
    S = res.head_spread + np.diag(np.asarray(res.params[SCALE], float)[at] ** 2)
    print(seed, "iterate sd", np.round(np.sqrt(np.diag(res.head_spread)), 3))
    def jensen(D):
        mu = np.exp(D @ w); q = np.einsum("ij,jk,ik->i", D, S, D)
        return D.T @ (mu * (np.exp(q / 2) - 1)) / len(D)
    Dsyn, _ = synthetic_design(res.params, layout, s)
    Jr, Js = jensen(X), jensen(Dsyn)
    g = res.loc_gradient[at]; mu = np.exp(X @ w)
    print("  window g     ", np.round(g, 3)); print("  true g(w̄)    ", np.round(X.T @ (mu - y) / n, 3))
    print("  window g - J ", np.round(g - Jr, 3), "(J from real X)"); print("  J syn        ", np.round(Js, 3))
    Ir = (X * mu[:, None]).T @ X; Is = head_information(res.params, layout, n, s); P = np.diag(np.r_[np.ones(len(at)-1), 1/6.25])
    for name, I, J in (("raw", None, None), ("newton", Is, 0), ("newtonJ syn", Is, Js), ("newtonJ realIJ", Ir, Jr)):
        v = w if I is None else w - np.linalg.solve(I + P, n * (g - J))
        print("  %-15s z" % name, np.round((v - fr.params) / fr.bse, 2))
