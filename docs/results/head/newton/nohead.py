"""Diagnostic (not private): seed 6 trained with the DP noise removed from the head's coordinates only."""
import os, sys
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from dataclasses import replace
import numpy as np, jax, jax.numpy as jnp
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
from twinnode.generator import dpsvi
from twinnode.generator.dpsvi import AlignedDPSVI, LOC, SCALE
mode = sys.argv[2]
def masked_update(self, svi_state, mask, *batch):
    svi_state, (eta_key, noise_key) = self._split_rng_key(svi_state, 2)
    params = self.optim.get_params(svi_state.optim_state)
    constrained = self.constrain_fn(params)
    loc, scale = constrained[LOC], constrained[SCALE]
    eta = jax.random.normal(self._rng_suite.convert_to_jax_rng_key(eta_key), loc.shape)
    total, loss = self.released_sum(svi_state, loc + scale * eta, mask, *batch)
    svi_state, noisy = self._perturb_and_reassemble_gradients(svi_state, noise_key, total / self._expected_batch, self._expected_batch)
    clean = total / self._expected_batch * svi_state.observation_scale
    head = jnp.asarray(self._head_mask)
    if mode == "nohead":
        noisy = jnp.where(head, clean, noisy)
    elif mode == "headonly":
        noisy = jnp.where(head, noisy, clean)
    noisy = noisy / self._weights()
    if mode == "record":
        jax.debug.callback(_rec, noisy[jnp.asarray(HEAD)] / svi_state.observation_scale, clean[jnp.asarray(HEAD)] / svi_state.observation_scale)
    grads_constrained = {LOC: noisy, SCALE: noisy * eta - 1.0 / scale}
    _, pullback = jax.vjp(self.constrain_fn, params)
    (grads,) = pullback(grads_constrained)
    return self._apply_gradient(svi_state, grads), loss
REC = []
def _rec(x, c):
    REC.append((np.asarray(x), np.asarray(c)))
HEAD = None
if mode != "plain":
    AlignedDPSVI.masked_update = masked_update
seed = int(sys.argv[1])
schema, frame = party(3000, seed); n = len(frame); layout = Layout.from_schema(schema); s = GeneratorSettings()
HEAD = head_index(layout, s)
plan = TrainPlan(epsilon=1.0)
cal = calibrate_split(1.0, 1/n, n, plan.q, plan.steps(), plan.batching, plan.share())
data = layout.encode(frame_to_arrays(schema, frame))
marg = measure(data, layout, cal.marginal_multiplier, seed + 1)
res = fit(data, layout, cal, s, seed + 1, None, anchored_start(layout, s, marg))
at = head_index(layout, s); w = np.asarray(res.params[LOC], float)[at]
X = np.c_[row_features(data, layout, s), np.ones(n)]; y = np.asarray(data.y)
fr = sm.GLM(y, X, family=sm.families.Poisson()).fit(cov_type="HC1")
if mode == "record":
    R = np.array([r[0] for r in REC]); C = np.array([r[1] for r in REC])
    print("window mean noisy ", np.round(R[-2000:].mean(0), 3))
    print("window mean clean ", np.round(C[-2000:].mean(0), 3), "(clipped, at the iterates)")
    print("window mean noise ", np.round((R - C)[-2000:].mean(0), 3), "sd per coordinate expected 0.046")
    Z = (R - C)
    np.save(f"/tmp/hp/noise{seed}.npy", Z)
    print("noise per-step sd", np.round(Z.std(0), 3), "lag-1 corr", np.round([np.corrcoef(Z[1:, j], Z[:-1, j])[0, 1] for j in range(Z.shape[1])], 3))
    print("noise mean over all 4000 steps", np.round(Z.mean(0), 3))
    mu0 = np.exp(X @ w); Ir = (X * mu0[:, None]).T @ X
    xi = Z[-2000:].mean(0) * n
    print("Polyak error I^-1 N xi (HC1 SEs)", np.round(-np.linalg.solve(Ir, xi) / fr.bse, 2))
    print("actual error (HC1 SEs)          ", np.round((w - fr.params) / fr.bse, 2))
    cov = (2.05 * n) ** 2 / 2000 * np.linalg.inv(Ir) @ np.linalg.inv(Ir)
    print("formula sd (HC1 SEs)            ", np.round(np.sqrt(np.diag(cov)) / fr.bse, 2))
    for a, b in ((0, 500), (500, 1000), (1000, 2000), (2000, 3000), (3000, 4000)):
        print("  steps %4d-%4d clean mean" % (a, b), np.round(C[a:b].mean(0), 3))
X = np.c_[row_features(data, layout, s), np.ones(n)]; y = np.asarray(data.y)
fr = sm.GLM(y, X, family=sm.families.Poisson()).fit(cov_type="HC1")
print(mode, "z (HC1)", np.round((w - fr.params) / fr.bse, 2), list(layout.feature_names))
mu = np.exp(X @ w)
print("  window g", np.round(res.loc_gradient[at], 3)); print("  true g  ", np.round(X.T @ (mu - y) / n, 3))
