import os, sys, pickle
os.environ.setdefault("JAX_PLATFORMS", "cpu")
CELLS = os.environ.get("HEAD_CELLS", "/tmp/head-newton")  # trained cells (pickles, not committed)
import numpy as np, jax, jax.numpy as jnp
import d3p.random as secure_rng
sys.path.insert(0, "scripts")
from fidelity_study import party
from twinnode.data import frame_to_arrays
from twinnode.generator.layout import Layout
from twinnode.generator.train import _compiled
from twinnode.generator.headnoise import head_index
from twinnode.generator.models import row_features
seed = int(sys.argv[1]); label = sys.argv[2] if len(sys.argv) > 2 else "cache"
d = pickle.load(open(f"{CELLS}/{label}/{seed}.pkl", "rb")); post = d["post"]; c = post.calibration; s = post.settings
schema, frame = party(3000, seed); layout = Layout.from_schema(schema); n = post.n
data = layout.encode(frame_to_arrays(schema, frame)); arrays = tuple(jnp.asarray(a) for a in data)
svi, _ = _compiled(layout, n, s, c.batching, c.sigma, c.batch_size, c.expected_batch)
state = svi.init(secure_rng.PRNGKey(0), *(a[:1] for a in arrays)); scale = state.observation_scale
loc = jnp.asarray(post.params["auto_loc"])
g = jax.vmap(jax.grad(lambda th, *row: svi._potential_per_row(th, row) / scale), in_axes=(None,) + (0,) * len(arrays))(loc, *arrays)
g = np.asarray(g); at = head_index(layout, s); mask = np.zeros(g.shape[1], bool); mask[at] = True
norm = np.linalg.norm(g, axis=1); hn = np.linalg.norm(g[:, mask], axis=1); mn = np.linalg.norm(g[:, ~mask], axis=1)
cf = np.minimum(1, s.clip / norm)
f = row_features(data, layout, s); j = list(layout.feature_names).index("disea"); x = f[:, j]
print("scale", scale, "median norm %.1f  head %.1f  mix %.1f  share clipped %.2f" % (np.median(norm), np.median(hn), np.median(mn), (norm > s.clip).mean()))
q = np.quantile(x, [0, .5, .8, .9, .95, 1])
for lo, hi in zip(q[:-1], q[1:]):
    m = (x >= lo) & (x <= hi)
    print("disea [%.2f,%.2f] rows %4d  clip factor mean %.2f  mix norm med %.0f head norm med %.1f" % (lo, hi, m.sum(), cf[m].mean(), np.median(mn[m]), np.median(hn[m])))
clipped = (g * cf[:, None]).mean(axis=0)
print("clipped mean g(w̄) head", np.round(clipped[at], 3))
print("unclipped mean g     ", np.round(g.mean(axis=0)[at], 3))
print("window g             ", np.round(d["gradient"][at], 3))
y = np.asarray(data.y); big = hn > s.clip
print("rows with head norm > C: %d (%.1f%%), their y mean %.1f, share of sum y %.2f" % (big.sum(), 100*big.mean(), y[big].mean(), y[big].sum()/y.sum()))
scl = jnp.asarray(post.params["auto_scale"])
print("guide scale: head median %.3f  mixture median %.3f  mixture max %.2f" % (np.median(np.asarray(scl)[at]), np.median(np.asarray(scl)[~mask]), np.asarray(scl)[~mask].max()))
gradf = jax.jit(jax.vmap(jax.grad(lambda th, *row: svi._potential_per_row(th, row) / scale), in_axes=(None,) + (0,) * len(arrays)))
acc = np.zeros(g.shape[1]); frac = 0
for k in range(20):
    eta = jax.random.normal(jax.random.PRNGKey(k), loc.shape)
    gk = np.asarray(gradf(loc + scl * eta, *arrays)); nk = np.linalg.norm(gk, axis=1)
    acc += (gk * np.minimum(1, s.clip / nk)[:, None]).mean(axis=0) / 20; frac += (nk > s.clip).mean() / 20
print("clipped mean g at loc+scale*eta (20 draws)", np.round(acc[at], 3), "share clipped %.2f" % frac)
