"""Where a K = 100 combined fit's CPU time goes, by function (bench_analysis's randhie data).

Wraps the fitter's functions by name with CPU timers (a function a version lacks is left
out, so the same script profiles the fitter before issue 16 too: put that tree first on
PYTHONPATH) and prints the best of 7 runs. Rows nest ("all" includes what it calls).

    taskset -c 0 nice -n 10 .venv/bin/python scripts/profile_analysis.py
    PYTHONPATH=/tmp/old taskset -c 0 nice -n 10 .venv/bin/python scripts/profile_analysis.py
"""
import os, sys, time, collections
os.environ.setdefault("JAX_PLATFORMS","cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_analysis as b
import twinnode.analysis.spd as S, twinnode.analysis.newton as N, twinnode.analysis.glm as G, twinnode.analysis.fit as F
from twinnode.analysis.fit import AnalysisOptions, combined_fit
schema, local, peers = b.setup("randhie", 100, 300)
opt = AnalysisOptions(rule="reiter")
tm=collections.Counter(); depth=[0]
def wrap(mods, name, key, owner=None):
    src = owner if owner is not None else next((m for m in mods if hasattr(m, name)), None)
    if src is None or not hasattr(src, name): return
    f=getattr(src,name)
    def g(*a, **k):
        t=time.process_time(); r=f(*a, **k); tm[key]+=time.process_time()-t; return r
    for m in mods:
        if hasattr(m,name): setattr(m,name,g)
wrap([S,N,G],"gram","Gram products (incl. within the rows below)"); wrap([S,G],"grams","Gram products (incl. within the rows below)")
wrap([S,N,G],"spd_inverse","p x p inverses"); wrap([S,N],"spd_inverse_one","p x p inverses")
wrap([N],"_halve_until_better","step + line search"); 
for cls in ("_ScoreStep", "_Replicate"):  # before / after the one-replicate-at-a-time Newton
    if hasattr(N, cls):
        wrap([getattr(N, cls)],"_step","step + line search"); wrap([getattr(N, cls)],"_products","scores (+ Hessians)")
        wrap([getattr(N, cls)],"_start","start (linear predictor, exp)")
wrap([N,G],"run_newton","Newton iterations (all)"); wrap([G],"_sandwich","sandwich (all)")
wrap([F],"stack_blocks","stacking the designs"); wrap([F],"fit_poisson_columns","fitter (all)")
combined_fit(schema, local, peers, options=opt)
best=None
for _ in range(7):
    tm.clear(); t=time.process_time(); combined_fit(schema, local, peers, options=opt); tot=time.process_time()-t
    if best is None or tot<best[0]: best=(tot, dict(tm))
print(f"combined_fit, K = 100: {best[0]*1e3:.0f} ms CPU")
for k,v in sorted(best[1].items(), key=lambda x:-x[1]): print(f"  {k:45s} {v*1e3:6.0f} ms")
