"""Train the fidelity study's 'new' cells once (same seeds), keep posterior + window gradient."""
import os, sys, pickle
os.environ.setdefault("JAX_PLATFORMS", "cpu")
CELLS = os.environ.get("HEAD_CELLS", "/tmp/head-newton")  # trained cells (pickles, not committed)
from dataclasses import replace
import numpy as np
sys.path.insert(0, "scripts")
from fidelity_study import party
from twinnode.data import frame_to_arrays
from twinnode.generator.accounting import calibrate_split
from twinnode.generator.layout import Layout
from twinnode.generator.settings import GeneratorSettings, TrainPlan
import twinnode.generator.release as rel
from twinnode.generator.train import fit as real_fit
out = {}
def spy(*a, **k):
    r = real_fit(*a, **k); out["gradient"] = r.loc_gradient; out["raw"] = r.params; return r
rel.fit = spy
import json
over = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
label = sys.argv[3] if len(sys.argv) > 3 else "cache"
os.makedirs(f"{CELLS}/{label}", exist_ok=True)
for seed in [int(s) for s in sys.argv[1].split(",")]:
    path = f"{CELLS}/{label}/{seed}.pkl"
    if os.path.exists(path): continue
    schema, frame = party(3000, seed)
    n = len(frame); layout = Layout.from_schema(schema)
    plan = TrainPlan(epsilon=1.0)
    cal = calibrate_split(1.0, 1/n, n, plan.q, plan.steps(), plan.batching, plan.share())
    data = layout.encode(frame_to_arrays(schema, frame))
    post = replace(rel.fit_release(data, layout, cal, GeneratorSettings(**over), seed + 1), schema_hash=schema.hash, release="x")
    pickle.dump({"post": post, "gradient": out["gradient"]}, open(path, "wb"))
    print("cached", seed, flush=True)
