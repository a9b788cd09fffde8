"""`twinnode train` and `twinnode sample`: a private CSV -> DP posterior -> K twins + receipt."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from twinnode.errors import ConfigError

if TYPE_CHECKING:
    from twinnode.generator.settings import GeneratorSettings, TrainPlan
    from twinnode.schema import Schema
    from twinnode.twins import Release


def register(sub: argparse._SubParsersAction) -> None:
    from twinnode.generator.settings import GeneratorSettings, TrainPlan

    p = sub.add_parser(
        "train", help="train the DP generator on a CSV and write K synthetic twins",
        description="Validate DATA against SCHEMA, train the DP generative model at "
                    "(epsilon, delta), charge the privacy ledger first, then write "
                    "twin-000.csv..., posterior.npz and receipt.json to OUT.",
        epilog="example: twinnode train --data site.csv --schema schema.toml --out release/ "
               "--sender alice --state state/   (a node publishes it: twinnode ctl publish "
               "release=release)")
    p.add_argument("--data", required=True, type=Path, help="private CSV (or Parquet) file")
    p.add_argument("--schema", required=True, type=Path, help="schema TOML file")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    plan, gen = TrainPlan(), GeneratorSettings()
    p.add_argument("--epsilon", type=float, default=plan.epsilon,
                   help=f"privacy epsilon (default {plan.epsilon:g})")
    p.add_argument("--delta", type=float, default=None, help="privacy delta (default 1/N)")
    p.add_argument("--epochs", type=float, default=plan.epochs,
                   help=f"passes over the data (default {plan.epochs:g}; the paper used 4000)")
    p.add_argument("--q", type=float, default=plan.q,
                   help=f"sampling rate per step (default {plan.q:g})")
    p.add_argument("--batching", choices=["poisson", "fixed"], default=plan.batching,
                   help="poisson: add/remove relation (default); fixed: substitute relation")
    _add_release_method_args(p, plan, gen)
    add_sampling_args(p)
    p.add_argument("--budget", type=float, default=None,
                   help="cap on total epsilon in the ledger; refused past it")
    p.add_argument("--cpus", default=None, help="pin training to these CPUs, e.g. 0 or 0,1")
    p.set_defaults(func=run_train)
    _register_sample(sub)


def _add_release_method_args(p: argparse.ArgumentParser, plan: TrainPlan,
                             gen: GeneratorSettings) -> None:
    from twinnode.generator.settings import DEFAULT_MARGINAL_SHARE

    p.add_argument("--marginal-share", type=float, default=None,
                   help="part of the release's privacy spent on noisy one-way marginals that "
                        f"anchor and calibrate the twins, in [0, 1) (default "
                        f"{DEFAULT_MARGINAL_SHARE:g} with poisson batching, 0 with fixed; "
                        "0: none)")
    p.add_argument("--average", type=float, default=gen.average,
                   help="share of the last steps whose iterates are averaged, in [0, 1) "
                        f"(default {gen.average:g}; 0: the last iterate)")
    p.add_argument("--no-noise-aware", dest="noise_aware", action="store_false",
                   help="twins share the release's DP noise (as before 2026-12) instead of "
                        "each carrying its own draw of it")
    p.add_argument("--clip", type=float, default=gen.clip,
                   help=f"per-example clipping norm C (default {gen.clip:g})")
    p.add_argument("--learning-rate", type=float, default=gen.learning_rate,
                   help=f"Adam step size (default {gen.learning_rate:g})")
    p.add_argument("--head-learning-rate", type=float, default=gen.head_learning_rate,
                   help="Adam step size on the outcome head alone (default: the same as "
                        "--learning-rate; docs/GENERATOR.md, \"The head under DP noise\")")
    p.add_argument("--center-head", action="store_true", default=gen.center_head,
                   help="centre the head's features at the noisy marginal means (needs a "
                        "marginal share > 0; off by default)")
    p.add_argument("--head-newton", action="store_true", default=gen.head_newton,
                   help="move the averaged head one Newton step along the averaging window's "
                        "mean noisy gradient (free; off by default: docs/GENERATOR.md, \"The "
                        "head under DP noise\")")
    p.add_argument("--components", type=int, default=gen.components,
                   help=f"mixture components (default {gen.components})")
    p.add_argument("--outcome-likelihood", choices=["poisson", "negbinomial"],
                   default=gen.outcome, help=f"outcome head likelihood ({gen.outcome})")
    p.add_argument("--variant", choices=["aligned", "dpsvi"], default=gen.variant,
                   help="aligned: DPVIm, privatise location gradients only (default); "
                        "dpsvi: d3p's DPSVI as is")


def _register_sample(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("sample", help="draw more twins from a saved posterior (no privacy cost)",
                       description="Sample K more twins from posterior.npz; costs no privacy "
                                   "(post-processing), and the ledger records it as free.",
                       epilog="example: twinnode sample --posterior release/posterior.npz "
                              "--schema schema.toml --out more/ --twins 50")
    s.add_argument("--posterior", required=True, type=Path, help="posterior.npz from train")
    s.add_argument("--schema", required=True, type=Path, help="schema TOML file")
    s.add_argument("--out", required=True, type=Path, help="output directory")
    add_sampling_args(s)
    s.set_defaults(func=run_sample)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--twins", type=int, default=100, help="number of twins K (default 100)")
    p.add_argument("--sender", default=None, help="party name in the receipt (default: host)")
    p.add_argument("--seed", type=int, default=None,
                   help="fix the random seed (testing only: whoever knows it can undo the noise)")
    p.add_argument("--state", type=Path, default=None,
                   help="state directory holding the privacy ledger (default: OUT's parent)")


def _sender(args: argparse.Namespace) -> str:
    import socket

    return args.sender or socket.gethostname()


def _check_out(out: Path) -> None:
    if (out / "receipt.json").exists():
        raise ConfigError(f"{out} already holds a release (receipt.json); choose another --out")


def run_train(args: argparse.Namespace) -> int:
    from twinnode.data import read_table
    from twinnode.generator.cpus import parse_cpus, pin_to_cpus
    from twinnode.generator.settings import GeneratorSettings, TrainPlan
    from twinnode.schema import Schema

    # everything a user can get wrong is checked before JAX loads
    schema = Schema.load(args.schema)
    frame = read_table(args.data, schema)
    _check_out(args.out)
    plan = TrainPlan(epsilon=args.epsilon, delta=args.delta, epochs=args.epochs, q=args.q,
                     batching=args.batching, marginal_share=args.marginal_share)
    settings = GeneratorSettings(components=args.components, outcome=args.outcome_likelihood,
                                 clip=args.clip, learning_rate=args.learning_rate,
                                 variant=args.variant, average=args.average,
                                 noise_aware=args.noise_aware,
                                 head_learning_rate=args.head_learning_rate,
                                 center_head=args.center_head,
                                 head_newton=args.head_newton)
    pinned = pin_to_cpus(parse_cpus(args.cpus))  # before JAX starts its threads

    from twinnode.cli.progress import TrainProgress
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import train_and_release

    ledger = Ledger(args.state or args.out.resolve().parent, cap_epsilon=args.budget)
    new_ledger = not ledger.snapshot()["entries"]
    print(f"training on {len(frame)} rows of {args.data} (schema {schema.short_hash}) at "
          f"epsilon={plan.epsilon:g}, {plan.epochs:g} epochs, {plan.batching} batching, "
          f"CPUs {sorted(pinned)}", file=sys.stderr)
    with TrainProgress() as bar:
        release = train_and_release(schema, frame, plan, ledger, args.out / "posterior.npz",
                                    args.twins, _sender(args), settings, args.seed, bar.update)
    if new_ledger:  # said once the charge is on disk, never for a run that did not start
        print(f"started a new privacy ledger at {ledger.path}; if these data were trained "
              "on before, pass --state with that run's state directory, so the budget counts "
              "every run", file=sys.stderr)
    return _write_release(args, release, schema)


def run_sample(args: argparse.Namespace) -> int:
    from twinnode.generator.posterior import Posterior
    from twinnode.generator.privacy import Ledger
    from twinnode.generator.release import draw_release
    from twinnode.schema import Schema

    schema = Schema.load(args.schema)
    posterior = Posterior.load(args.posterior, schema)
    _check_out(args.out)
    ledger = Ledger(args.state or args.out.resolve().parent)
    release = draw_release(posterior, schema, args.twins, _sender(args), args.seed, ledger)
    return _write_release(args, release, schema)


def _write_release(args: argparse.Namespace, release: Release, schema: Schema) -> int:
    """Save the twins and receipt in OUT and say what was written."""
    from twinnode.releasedir import save_release

    save_release(release, args.out, schema)
    r = release.receipt
    print(f"wrote {args.twins} twins of {r['n']} rows to {args.out}/ "
          f"(epsilon={r['epsilon']:g}, delta={r['delta']:.3g}, sigma={r['sigma']:.3f}, "
          f"{r['relation']}, {r['steps']} steps); receipt: {args.out}/receipt.json")
    return 0
