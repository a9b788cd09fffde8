"""`twinnode analyze`: combined Poisson analysis of local rows and peers' twin releases."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from twinnode.analysis.options import (
    DEFAULT_AGREEMENT_ALPHA,
    DEFAULT_DRAWS,
    DEFAULT_FALLBACK,
    DEFAULT_FOLDS,
    DEFAULT_HETEROGENEITY,
    DEFAULT_INTERVAL,
    DEFAULT_LEVEL,
    DEFAULT_ON_DISAGREEMENT,
    DEFAULT_POLICY,
    DEFAULT_RULE,
    DEFAULT_SEED,
    DEFAULT_SELECTION,
    DEFAULT_THRESHOLD,
    DEFAULT_WEIGHT,
    FALLBACKS,
    HETEROGENEITIES,
    INTERVALS,
    ON_DISAGREEMENT,
    POLICIES,
    RULES,
    SELECTIONS,
    VALIDATION_REPLICATES,
)
from twinnode.errors import AnalysisError, ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="pool a Poisson GLM over local rows + peers' twins",
        description="Screen the peers (against the local rows and each other); choose the weight of the peers' "
                    "twin rows by cross-validation on the local rows (--weight auto, the "
                    "default; --weight 1 is the paper's plain concatenation); for k = 1..K "
                    "fit the schema's outcome on the covariates over the local rows plus "
                    "twin k of every peer, pool the K fits, and compare with the local-only "
                    "fit (and, with --test, the mean test log-likelihood). Screening judges "
                    "each peer against the local rows and, with at least 3 peers, against "
                    "the consensus of the others; with fewer than 3 peers only noise-aware "
                    "releases can be judged (the report says which). See docs/ANALYSIS.md.",
        epilog="example: twinnode analyze --schema schema.toml --local site.csv --twins "
               "bob/ carol/ dave/ --test heldout.csv")
    p.add_argument("--schema", required=True, type=Path, help="schema TOML file")
    p.add_argument("--local", required=True, type=Path, help="local data (CSV or Parquet)")
    p.add_argument("--twins", required=True, type=Path, nargs="+", metavar="DIR",
                   help="release directories (receipt.json + twin-NNN.csv), one per peer")
    p.add_argument("--test", type=Path, help="held-out data for the test log-likelihood")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="also write the summary table to FILE as CSV (cells as printed)")
    p.add_argument("--covariates", help="comma list of covariates (default: all columns)")
    p.add_argument("--reference", action="append", default=[], metavar="COL=LEVEL",
                   help="reference level of a categorical covariate (default: its first)")
    _add_pooling_args(p)
    _add_weight_args(p)
    p.set_defaults(func=run)


def _add_pooling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", choices=RULES, default=DEFAULT_RULE,
                   help="pooling rule: mixed (Raghunathan-Reiter on the twins' share of the "
                        "variance + the local rows' own share; default), reiter (fully "
                        "synthetic, the paper's), rubin (multiple imputation)")
    p.add_argument("--fallback", choices=FALLBACKS, default=DEFAULT_FALLBACK,
                   help=f"total variance used where the rule's is not positive "
                        f"({DEFAULT_FALLBACK})")
    p.add_argument("--heterogeneity", choices=HETEROGENEITIES, default=DEFAULT_HETEROGENEITY,
                   help="between-release term of T, estimated from the peers' own fits and "
                        "the local fit as in a random-effects meta-analysis: pmm "
                        "(median-unbiased Paule-Mandel; default), pm, dl "
                        "(DerSimonian-Laird), off (the pooling rule's T alone)")
    p.add_argument("--agreement-alpha", type=float, default=DEFAULT_AGREEMENT_ALPHA,
                   metavar="A",
                   help="a term's twins disagree with the local rows when its Holm-adjusted "
                        f"p-value is below this ({DEFAULT_AGREEMENT_ALPHA:g})")
    p.add_argument("--on-disagreement", choices=ON_DISAGREEMENT,
                   default=DEFAULT_ON_DISAGREEMENT,
                   help="what to report for a term whose twins disagree: keep (the combined "
                        "estimate, the term named; default) or local (the local-only "
                        "estimate and interval, the term marked)")
    p.add_argument("--interval", choices=INTERVALS, default=DEFAULT_INTERVAL,
                   help="reference distribution of the intervals (t with the rule's df)")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL,
                   help=f"interval level ({DEFAULT_LEVEL:g})")


def _add_weight_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weight", default=DEFAULT_WEIGHT, metavar="auto|W",
                   help="weight of the peers' twin rows: auto (chosen by cross-validation "
                        "on the local rows; default) or a number in [0, 1] (1: the paper's "
                        "plain concatenation, 0: local only; --weight 1 --rule reiter "
                        "--heterogeneity off is "
                        "the paper's whole analysis)")
    p.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                   help=f"cross-validation folds ({DEFAULT_FOLDS})")
    p.add_argument("--cv-replicates", type=int, default=VALIDATION_REPLICATES, metavar="R",
                   help=f"twins per validation fit ({VALIDATION_REPLICATES}; at most K)")
    p.add_argument("--select", choices=SELECTIONS, default=DEFAULT_SELECTION,
                   help="how --weight auto picks: best (the best held-out mean; default), "
                        "guarded (the best only if it beats local only by one standard "
                        "error), one-se (the smallest weight within one standard error "
                        "of the best)")
    p.add_argument("--screen", choices=POLICIES, default=DEFAULT_POLICY,
                   help="screening policy (flag: report only; exclude: drop flagged peers)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"flag a peer whose screening p-value is below this "
                        f"({DEFAULT_THRESHOLD:g})")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help=f"Monte Carlo draws ({DEFAULT_DRAWS})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="seed of the folds and of the Monte Carlo draws")


def run(args: argparse.Namespace) -> int:
    from twinnode.analysis.fit import AnalysisOptions
    from twinnode.analysis.party import analyze_party
    from twinnode.analysis.weighting import parse_weight
    from twinnode.data import read_table
    from twinnode.releasedir import load_release
    from twinnode.schema import Schema

    weight = parse_weight(args.weight)
    if not 0 < args.agreement_alpha < 1:
        raise ConfigError(f"--agreement-alpha must be in (0, 1), got {args.agreement_alpha}")
    schema = Schema.load(args.schema)
    options = AnalysisOptions(covariates=_covariates(args.covariates),
                              reference=_references(args.reference), rule=args.rule,
                              fallback=args.fallback, level=args.level,
                              interval=args.interval, heterogeneity=args.heterogeneity,
                              agreement_alpha=args.agreement_alpha,
                              on_disagreement=args.on_disagreement)
    local = read_table(args.local, schema)
    peers: dict[str, Any] = {}
    for directory in args.twins:
        release = load_release(directory, schema)
        name = release.sender or directory.name
        if name in peers:
            raise AnalysisError(f"{directory}: a second release from peer {name!r}; give one "
                                "release per peer")
        peers[name] = release.twins
    test = read_table(args.test, schema) if args.test is not None else None
    report = analyze_party(schema, local, peers, weight=weight, test_frame=test,
                           options=options, policy=args.screen, threshold=args.threshold,
                           folds=args.folds, replicates=args.cv_replicates,
                           selection=args.select, seed=args.seed, draws=args.draws)
    out = report.to_dict()
    if args.csv is not None:
        from twinnode.cli.summary import write_csv

        write_csv(out["summary"], args.csv)
    if args.json:
        print(json.dumps(out, indent=2, allow_nan=False))
    else:
        print(render(out))
    return 0


def _covariates(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise ConfigError("--covariates needs at least one column name")
    return names


def _references(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        col, sep, level = item.partition("=")
        if not sep or not col.strip() or not level.strip():
            raise ConfigError(f"--reference takes COL=LEVEL, got {item!r}")
        out[col.strip()] = level.strip()
    return out


def render(out: dict[str, Any]) -> str:
    """The human-readable report: the summary table, twin weight, pooling, screening,
    scores."""
    from twinnode.cli.summary import render as render_summary

    pooling = out["pooling"]
    lines = [render_summary(out["summary"]), "", _render_weight(out["weight"])]
    lines += ["", f"pooling: {pooling['rule']} rule, {pooling['interval']} intervals; "
                  f"fallback ({pooling['fallback_rule']}) for {pooling['fallback_count']} "
                  f"term(s){' (marked *)' if pooling['fallback_count'] else ''}; "
                  f"{pooling['failed_replicates']} failed replicate(s) excluded; each term's df "
              "is in the JSON report (--json)"]
    lines += _render_between(pooling.get("heterogeneity"))
    lines += [f"warning: {w}" for w in pooling["warnings"]]
    lines += ["", _render_agreement(out.get("agreement"), out.get("moved_outside_local", []),
                                    out.get("replaced_by_local", []))]
    lines += ["", _render_screening(out["screening"])]
    if "ll_local" in out:
        ev = out["evaluation"]
        lines += ["", f"test log-likelihood per record ({ev['local']['n_test']} rows, "
                      f"{ev['local']['draws']} draws of w ~ N(q, T), seed {ev['local']['seed']}):"]
        for label, key in (("local only", "local"), ("combined", "combined")):
            e = ev[key]
            lines.append(f"  {label:<11} mean {_num(e['mean'], 5)}  plug-in "
                         f"{_num(e['plugin'], 5)}  90% of draws in [{_num(e['q05'], 5)}, "
                         f"{_num(e['q95'], 5)}]")
    return "\n".join(lines)


def _render_between(het: dict[str, Any] | None) -> list[str]:
    """The between-release term: the estimator and the terms it widened."""
    if het is None:
        return ["between-release term: off"]
    if het["note"]:
        return [f"between-release term ({het['method']}): {het['note']}"]
    widened = [t for t, v in het["terms"].items() if (v["added_variance"] or 0) > 0]
    return [f"between-release term ({het['method']}, from the peers' own fits and the local "
            f"fit): added to T for {len(widened)} term(s)"
            + (f": {', '.join(widened)}" if widened else "")]


def _render_agreement(a: dict[str, Any] | None, moved: list[str],
                      replaced: list[str]) -> str:
    """Which terms the twins alone contradict the local rows on (Holm over the terms)."""
    if a is None:
        return "agreement with the local rows: no peer twins to compare"
    lines = [f"agreement of the twins alone with the local rows ({a['tested']} term(s), "
             f"Holm at {a['alpha']:g}): " + (f"DISAGREE on {', '.join(a['disagreeing'])}"
                                             if a["disagreeing"] else "no term disagrees")]
    if moved:
        lines.append(f"  the combined interval lies wholly outside the local one for: "
                     f"{', '.join(moved)}")
    if replaced:
        lines.append(f"  reported with the local-only estimate and interval "
                     f"(--on-disagreement local): {', '.join(replaced)}")
    return "\n".join(lines)


def _render_weight(w: dict[str, Any]) -> str:
    """The chosen λ, the validation curve, and the verdict."""
    how = {"auto": f"chosen by cross-validation, {w['selection']} rule",
           "fixed": "fixed by the user", "no-peers": "no peer twins",
           "unvalidated": "not validated"}[w["mode"]]
    lines = [f"twin weight λ = {w['chosen']:g} ({how})"]
    if w["folds"]:
        lines.append(f"  {w['folds']}-fold cross-validation on {w['n_local']} local rows, "
                     f"{w['replicates']} twin(s) per fit; held-out plug-in log-likelihood "
                     f"per record:")
        lines.append(f"  {'λ':>6}{'mean':>12}{'SE':>9}{'gain vs local':>15}{'SE':>9}")
        for c in w["curve"]:
            mark = "  <- chosen" if c["weight"] == w["chosen"] else ""
            if c["weight"] == w["best"] and c["weight"] != w["chosen"]:
                mark = "  (best mean)"
            lines.append(f"  {c['weight']:>6g}{_num(c['mean'], 5):>12}{_num(c['se'], 5):>9}"
                         f"{_num(c['gain'], 5):>15}{_num(c['gain_se'], 5):>9}{mark}")
    lines.append(f"does joining help? {w['verdict']}")
    return "\n".join(lines)


def _render_screening(s: dict[str, Any]) -> str:
    lines = [f"screening ({s['policy']}, flag at p < {s['threshold']:g}): {s['message']}"]
    if s["peers"]:
        lines.append(f"  {'peer':<16}{'n':>7}{'eps':>7}{'score':>8}{'p':>10}{'p local':>10}"
                     f"{'p cons.':>10}  verdict")
        for p in s["peers"]:
            verdict = ("FLAGGED: " + p["reason"] if p["flagged"] else
                       p["reason"] if p["reason"] else "ok")
            lines.append(f"  {p['peer'][:15]:<16}{p['n']:>7}{_num(p['epsilon'], 3):>7}"
                         f"{_num(p['score'], 2):>8}{_num(p['p_value'], 3, 'g'):>10}"
                         f"{_num(p.get('p_local'), 3, 'g'):>10}"
                         f"{_num(p.get('p_consensus'), 3, 'g'):>10}  {verdict}")
    if s["flagged"] and s.get("without_flagged"):
        w, wo = s["with_flagged"]["coefficients"], s["without_flagged"]["coefficients"]
        lines.append(f"  estimates with / without {', '.join(s['flagged'])}:")
        for term in w:
            lines.append(f"    {term[:21]:<22}{_num(w[term]['estimate']):>10}"
                         f"{_num(wo[term]['estimate']):>10}")
    return "\n".join(lines)


def _num(x: Any, digits: int = 4, fmt: str = "f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "NA"
    return f"{x:.{digits}{fmt}}"
