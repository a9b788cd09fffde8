"""`twinnode ctl COMMAND --help`: each control command's own help, with an example.

Kept beside ctl (plain text; the choices from `analysis.options`, which imports nothing) so
`ctl` stays light; a test checks that every command
the node serves has its entry here.
"""
from __future__ import annotations

from twinnode.analysis.options import HETEROGENEITIES, INTERVALS, ON_DISAGREEMENT, RULES

CLIENT_COMMANDS = ("watch",)  # ctl's own: made of status requests, not sent to the node as such

JOB_NOTE = ("Answers at once (\"<cmd> started\" and the job; follow it live with `ctl watch`), "
            "or with wait=true when the job ends; while ctl waits it shows the job's bar "
            "(steps, ELBO, ETA), and a job that outlives --timeout is reported as still running "
            "(exit 0).")

HELP: dict[str, tuple[str, str, str]] = {
    # command: (what it does, its arguments, an example)
    "status": ("The node at a glance: pid, uptime, own seq, the job and its progress, the "
               "privacy budget, each peer's last heartbeat, twins held per sender, refusals by "
               "reason, counters.", "(none)", "twinnode ctl --state state status"),
    "peers": ("Each pinned peer: address, connected, last heartbeat, its latest seq, how "
              "many of its twins this node holds, its signing key's fingerprint. With reload, "
              "first pin what node.toml and the peers file pin now, without a restart (the "
              "node also does so by itself within 2 s of a change): new peers are connected, "
              "a removed peer's connections closed and its messages refused (its stored "
              "twins stay, left out of analyses), a rotated key replaces the old one.",
              "reload  (or reload=true)", "twinnode ctl --state state peers reload"),
    "twins": ("Twins held, per sender: count, the seqs held contiguously and above, statuses.",
              "detail=true  also list every stored envelope (seq, k, release, status, digest)",
              "twinnode ctl --state state twins detail=true"),
    "budget": ("The privacy ledger: epsilon spent, the cap and what is left, every entry "
               "(free sampling shows epsilon 0).", "(none)", "twinnode ctl --state state budget"),
    "train": ("Train the DP generator on the node's data (charges the ledger; refused at "
              "once past the cap), draw K twins, publish them. Refused when these data were "
              "trained on already, unless again=true: fresh twins from the saved posterior "
              "are free with `publish`. The reply states the epsilon it will spend. "
              + JOB_NOTE,
              "epsilon=E epochs=N k=K publish=false again=true wait=true",
              "twinnode ctl --state state train wait=true --timeout 600"),
    "publish": ("Publish twins: from a release directory made offline (`twinnode train "
                "--sender NAME`; charged once, when first published), or K fresh twins "
                "sampled from the saved posterior (free), or trained if there is none. "
                + JOB_NOTE,
                "release=DIR (relative paths are resolved by ctl) k=K wait=true",
                "twinnode ctl --state state publish release=out/release wait=true"),
    "screen": ("Judge each peer's latest twins against the local rows and the consensus of "
               "the others; stored twins become accepted, flagged or excluded. The consensus "
               "needs at least 3 peers (each is compared with the others); with fewer only "
               "noise-aware releases are judged, against the local rows, and it says so. "
               + JOB_NOTE,
               "policy=off|flag|exclude threshold=P wait=true",
               "twinnode ctl --state state screen policy=flag wait=true"),
    "analyze": ("The combined analysis over the local rows and each peer's latest twins "
                "(what `twinnode analyze` runs): screening (against the local rows; the "
                "consensus needs at least 3 peers), the twin weight by cross-validation, the pooled Poisson GLM beside "
                "the local-only fit; the full report goes to <state>/reports/. " + JOB_NOTE,
                "policy=... threshold=P weight=auto|W test=FILE.csv (relative paths are "
                "resolved by ctl) peers='[\"bob\",\"carol\"]' wait=true; and, over "
                f"node.toml's [analysis]: rule={'|'.join(RULES)} "
                f"heterogeneity={'|'.join(HETEROGENEITIES)} interval={'|'.join(INTERVALS)} "
                f"level=L agreement_alpha=A on_disagreement={'|'.join(ON_DISAGREEMENT)}",
                "twinnode ctl --state state analyze test=heldout.csv wait=true --timeout 300"),
    "watch": ("Follow the node's running job live until it ends, whoever started it: a bar "
              "with steps, ELBO per row and ETA, updated at least every second (on a terminal "
              "in place, else one line per update). Exits 0 when the job is done, 13 when it "
              "failed or was abandoned; with no job running it names the last one and exits "
              "0. --timeout bounds each status request, not the watch.", "(none)",
              "twinnode ctl --state state watch"),
    "shutdown": ("Reply, then stop the node as on SIGTERM (a running job is abandoned; a "
                 "training run's charge stays).", "(none)",
                 "twinnode ctl --state state shutdown"),
}


def command_help(cmd: str) -> str:
    """The help text of one control command."""
    what, args, example = HELP[cmd]
    return (f"usage: twinnode ctl [--state DIR | --socket PATH] [--json] [--timeout S] {cmd} "
            f"[KEY=VALUE ...]\n\n{what}\n\narguments: {args}\n\nexample: {example}\n\n"
            "exit codes: 0 ok (also: wait=true gave up waiting on a job that goes on), 13 the "
            "command failed, 14 no node is running")
