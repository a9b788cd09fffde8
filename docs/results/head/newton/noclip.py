"""Diagnostic (not private): the DP noise as calibrated, but no clipping (C huge, sigma scaled to keep sigma*C)."""
import os, sys
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from dataclasses import replace
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
from twinnode.generator.headnoise import head_index
from twinnode.generator.models import row_features
from twinnode.generator.dpsvi import LOC
seed = int(sys.argv[1]); big = float(sys.argv[2])
schema, frame = party(3000, seed); n = len(frame); layout = Layout.from_schema(schema)
s = GeneratorSettings(clip=big)
plan = TrainPlan(epsilon=1.0)
cal = calibrate_split(1.0, 1/n, n, plan.q, plan.steps(), plan.batching, plan.share())
cal = replace(cal, sigma=cal.sigma * 32.0 / big)
data = layout.encode(frame_to_arrays(schema, frame))
marg = measure(data, layout, cal.marginal_multiplier, seed + 1)
res = fit(data, layout, cal, s, seed + 1, None, anchored_start(layout, s, marg))
at = head_index(layout, s); w = np.asarray(res.params[LOC], float)[at]
X = np.c_[row_features(data, layout, s), np.ones(n)]; y = np.asarray(data.y)
fr = sm.GLM(y, X, family=sm.families.Poisson()).fit(cov_type="HC1")
print("clip", big, "z (HC1)", np.round((w - fr.params) / fr.bse, 2), list(layout.feature_names))
mu = np.exp(X @ w)
print("  window g", np.round(res.loc_gradient[at], 3)); print("  true g  ", np.round(X.T @ (mu - y) / n, 3))
