"""The analysis's choices and defaults: each list of accepted values, and each default, once.

The node's config (`node/config.py`), the command line (`cli/analyze.py`) and the analysis
modules that implement the choices all import them from here. The module imports nothing
(no numpy, pandas or scipy), so a config file or a command line is checked without loading
the statistics stack; before it, the config and the CLI kept copies, held equal by tests.
What each choice means is in the module that implements it (named beside each group).
"""
from __future__ import annotations

# screening (`screening`): which peers' twins a party judges, and what a flag does
POLICIES = ("off", "flag", "exclude")
DEFAULT_POLICY = "flag"
DEFAULT_THRESHOLD = 0.01
"""A peer is flagged when its screening p-value (Bonferroni over its statistics) is below."""
MIN_PEERS = 3
"""Fewer peers form no consensus to judge by: none is judged."""

# pooling the K fits (`pooling`)
RULES = ("mixed", "reiter", "rubin")
DEFAULT_RULE = "mixed"
"""See docs/ANALYSIS.md: with D_k = local rows ∪ twins, reiter's T subtracts the local rows'
variance that b never saw, and with a λ chosen below 1 the local rows carry a large share;
mixed is reiter on the twins' share and is exact at both ends (no local rows; λ = 0)."""
FALLBACKS = ("rubin", "within")
DEFAULT_FALLBACK = "rubin"
INTERVALS = ("t", "normal")
DEFAULT_INTERVAL = "t"
DEFAULT_LEVEL = 0.95

# the between-release term of T (`heterogeneity`)
HETEROGENEITIES = ("pmm", "pm", "dl", "off")
DEFAULT_HETEROGENEITY = "pmm"
"""How the between-release variance τ² of each term is estimated from the sites' own
estimates: median-unbiased Paule–Mandel (default), Paule–Mandel, DerSimonian–Laird, or off
(T as the pooling rule gives)."""

# agreement of the twins with the party's own rows (`agreement`)
DEFAULT_AGREEMENT_ALPHA = 0.05
"""A term disagrees when its Holm-adjusted p-value (over the terms) is below."""
ON_DISAGREEMENT = ("keep", "local")
DEFAULT_ON_DISAGREEMENT = "keep"
"""What the report gives for a term that disagrees (`disagreement`): keep the combined
estimate and interval, or report the local-only ones in their place."""

# robust standard errors (`glm`)
COV_TYPES = ("HC0", "HC1")
DEFAULT_COV_TYPE = "HC1"

# the twin weight λ (`weighting`)
DEFAULT_WEIGHT = "auto"
"""'auto' (cross-validated) or a number in [0, 1]."""
SELECTIONS = ("best", "guarded", "one-se")
DEFAULT_SELECTION = "best"
DEFAULT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
DEFAULT_FOLDS = 5
VALIDATION_REPLICATES = 20
"""Twins per validation fit (at most K)."""

# evaluation on a test set (`fit.evaluate`)
DEFAULT_DRAWS = 100
"""Monte Carlo draws of w ~ N(q̄, T)."""
DEFAULT_SEED = 0
