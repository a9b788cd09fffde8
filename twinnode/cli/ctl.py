"""`twinnode ctl COMMAND [key=value ...]`: ask a running node over its control socket.

Human-readable output by default (a formatter per known result shape, docs/CONTROL.md, and
a generic `key: value` layout for anything else); `--json` prints the raw result.
Exit codes: 14 when no node is running, 13 when the command fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from twinnode.errors import ConfigError
from twinnode.node.command_names import COMMANDS, JOB_COMMANDS
from twinnode.node.control_client import request_sync, socket_path

DEFAULT_STATE = "state"
CTL_COMMANDS = (*COMMANDS, "watch")  # watch: ctl_wait.watch_job, made of status requests
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ctl", help="send a command to a running node", add_help=False,
                       description="Send COMMAND to the node whose state directory is --state "
                                   "(or whose control socket is --socket) and print the reply. "
                                   f"Commands: {', '.join(CTL_COMMANDS)}. Extra KEY=VALUE "
                                   "arguments are passed on; values are read as JSON when "
                                   "they parse (epochs=10 is a number, name=x a string).",
                       epilog="examples: twinnode ctl --state state status; twinnode ctl "
                              "--state state train; twinnode ctl --state state watch; "
                              "twinnode ctl analyze --help\n"
                              "exit codes: 0 ok (also when wait=true gave up waiting on a job "
                              "that goes on: the message says so), 13 the command failed, "
                              "14 no node is running",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action=_CommandHelp, nargs=0,
                   help="show this help; after COMMAND, that command's own help")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--state", type=Path,
                       help=f"the node's state directory (default $TWINNODE_STATE, else "
                            f"./{DEFAULT_STATE}); the socket is <state>/control.sock")
    where.add_argument("--socket", type=Path, help="the control socket itself")
    p.add_argument("--json", action="store_true", help="print the raw JSON result")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="analyze wait=true: also write the summary table to FILE as CSV")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the reply (default 30)")
    p.add_argument("cmd", metavar="COMMAND", help=", ".join(CTL_COMMANDS))
    p.add_argument("params", nargs="*", metavar="KEY=VALUE", help="command arguments")
    p.set_defaults(func=run)


class _CommandHelp(argparse.Action):
    """-h/--help: ctl's help, or after a known COMMAND (`ctl train --help`) that command's."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        cmd = getattr(namespace, "cmd", None)
        if cmd in CTL_COMMANDS:
            from twinnode.cli.ctl_help import command_help

            print(command_help(cmd))
        else:
            parser.print_help()
        parser.exit()


def run(args: argparse.Namespace) -> int:
    path = args.socket or socket_path(args.state or os.environ.get("TWINNODE_STATE")
                                      or DEFAULT_STATE)
    params = resolve_paths(args.cmd, parse_params(args.params, BARE.get(args.cmd, ())))
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be positive, got {args.timeout}")
    if args.csv is not None and (args.cmd != "analyze" or params.get("wait") is not True):
        raise ConfigError("--csv goes with `analyze wait=true` (the table comes with the "
                          "finished analysis)")
    if args.cmd == "watch":
        from twinnode.cli.ctl_wait import watch_job

        if params:
            raise ConfigError("watch takes no KEY=VALUE arguments")
        print(watch_job(path, args.timeout))
        return 0
    if args.cmd in JOB_COMMANDS and params.get("wait") is True:
        from twinnode.cli.ctl_wait import STILL_RUNNING_EXIT, wait_for_job

        where = f"--socket {args.socket} " if args.socket else \
            (f"--state {args.state} " if args.state else "")
        done, running = wait_for_job(path, args.cmd, params, args.timeout, where)
        if done is None:
            print(json.dumps({"still_running": True, "message": running}, indent=2)
                  if args.json else running)
            return STILL_RUNNING_EXIT
        result = dict(done)
    else:
        result = request_sync(path, args.cmd, params, timeout=args.timeout)
    if args.csv is not None:
        from twinnode.cli.summary import write_csv

        write_csv(result["summary"], args.csv)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_result(args.cmd, result))
    return 0


BARE = {"peers": ("reload",)}  # words that stand for WORD=true: `ctl peers reload`


def parse_params(words: Sequence[str], bare: Sequence[str] = ()) -> dict[str, Any]:
    """["epochs=10", "name=x"] -> {"epochs": 10, "name": "x"}; JSON values when they parse;
    a word in `bare` alone means WORD=true."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        if not sep and word in bare:
            sep, text = "=", "true"
        if not sep or not _KEY_RE.fullmatch(key):
            raise ConfigError(f"expected KEY=VALUE, got {word!r}")
        if key in out:
            raise ConfigError(f"argument {key!r} given twice")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


PATH_ARGS = {"analyze": ("test",), "publish": ("release",)}  # files the node opens


def resolve_paths(cmd: str, params: dict[str, Any]) -> dict[str, Any]:
    """Make the path arguments the node opens absolute: the node does not know ctl's
    working directory, so `test=heldout.csv` means ./heldout.csv here."""
    for key in PATH_ARGS.get(cmd, ()):
        if isinstance(params.get(key), str) and params[key]:
            params[key] = str(Path(params[key]).expanduser().resolve())
    return params


# ---- human-readable output ------------------------------------------------------------------

def format_result(cmd: str, result: Mapping[str, Any]) -> str:
    """The result as text: the command's formatter, or the generic layout if it does not fit."""
    formatter = FORMATTERS.get(cmd, format_generic)
    try:
        return formatter(result)
    except (KeyError, TypeError, ValueError, AttributeError):
        return format_generic(result)


def format_generic(value: Any, indent: int = 0) -> str:
    """Nested `key: value` lines; lists of maps as '-' items."""
    pad = "  " * indent
    if isinstance(value, Mapping):
        if not value:
            return f"{pad}(empty)"
        lines = []
        for key, item in value.items():
            if isinstance(item, (Mapping, list)) and item and not _scalars(item):
                lines.append(f"{pad}{key}:")
                lines.append(format_generic(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines)
    if isinstance(value, list) and not _scalars(value):
        lines = []
        for item in value:
            body = format_generic(item, indent + 1).lstrip()
            lines.append(f"{pad}- {body}")
        return "\n".join(lines)
    return f"{pad}{_scalar(value)}"


def _scalars(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, (Mapping, list)) for v in value)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) if value else "(none)"
    if isinstance(value, Mapping) and not value:
        return "(none)"
    return str(value)


def _age(seconds: Any) -> str:
    if seconds is None:
        return "never"
    return f"{_duration(seconds)} ago"


def _duration(seconds: Any) -> str:
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _counts(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) if mapping else "none"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
            for r in [header, *rows]]


def _job(job: Mapping[str, Any] | None) -> str:
    from twinnode.cli.ctl_wait import describe

    return describe(job) if job else "none"


def _budget(b: Mapping[str, Any]) -> str:
    text = f"epsilon spent {float(b['spent']):.2f}"
    if b.get("cap") is not None:
        text += f" of {float(b['cap']):.2f}"
    if b.get("left") is not None:
        text += f", {float(b['left']):.2f} left"
    if b.get("delta") is not None:
        text += f" (delta {float(b['delta']):.3g})"
    return text


def _peer_rows(peers: Sequence[Mapping[str, Any]], detail: bool = False) -> list[str]:
    if not peers:
        return ["  (no peers configured)"]
    header = ["NAME", "CONNECTED", "LAST HEARTBEAT", "LATEST SEQ"]
    rows = [[p["name"], _scalar(p.get("connected")), _age(p.get("last_heartbeat_age")),
             _scalar(p.get("latest_seq"))] for p in peers]
    if detail:
        header += ["HELD", "ADDRESS"]
        rows = [r + [_scalar(p.get("held")), _scalar(p.get("address"))]
                for r, p in zip(rows, peers)]
    return _table(header, rows)


def _link_lines(peers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per peer whose link is down: since when and the last error; per limits mismatch: it."""
    lines = []
    for p in peers:
        link = p.get("link") or {}
        if link.get("down_since") is not None:
            line = (f"  {p['name']}: disconnected since {_when(link['down_since'])} "
                    f"({_duration(link.get('down_for') or 0)})")
            if link.get("last_error"):
                line += f", last error: {link['last_error']}"
            lines.append(line + f" (relinks {link.get('relinks', 0)})")
        if p.get("limits_mismatch"):
            lines.append(f"  {p['name']}: {p['limits_mismatch']}")
    return lines


def format_status(r: Mapping[str, Any]) -> str:
    head = f"node {r['node']}"
    extras = [f"pid {r['pid']}" if r.get("pid") else "",
              f"up {_duration(r['uptime'])}" if r.get("uptime") is not None else "",
              f"own seq {r['own_seq']}" if r.get("own_seq") is not None else ""]
    if any(extras):
        head += " (" + ", ".join(e for e in extras if e) + ")"
    lines = [head, f"job: {_job(r.get('job'))}"]
    if r.get("budget"):
        lines.append(f"budget: {_budget(r['budget'])}")
    recovery = r.get("recovery") or {}
    if recovery.get("state") not in (None, "off"):  # a lost state (docs/NODE.md)
        lines.append(f"recovery: {recovery.get('detail')}")
    lines.append("peers:")
    lines += _peer_rows(r.get("peers", []))
    lines += _link_lines(r.get("peers", []))
    lines.append(f"twins held: {_counts(r.get('twins', {}))}")
    lines.append(f"rejected: {_counts(r.get('rejected', {}))}")
    return "\n".join(lines)


def format_peers(r: Mapping[str, Any]) -> str:
    lines = ["peers:", *_peer_rows(r["peers"], detail=True), *_link_lines(r["peers"])]
    if "reload" in r:
        change = {k: v for k, v in r["reload"].items() if k != "pinned" and v}
        lines.insert(0, "reloaded: " + ("; ".join(f"{k} {', '.join(v)}" for k, v in
                                                  change.items()) or "no change"))
    return "\n".join(lines)


def format_twins(r: Mapping[str, Any]) -> str:
    senders = r["senders"]
    if not senders:
        return "no twins held"
    rows = [[s["sender"], str(s["count"]), str(s.get("watermark", "-")),
             _ranges(s.get("ranges", [])), _counts(s.get("status", {}))] for s in senders]
    lines = ["twins held:", *_table(["SENDER", "COUNT", "CONTIGUOUS TO", "ALSO", "STATUS"], rows)]
    for s in senders:  # with detail=true
        if s.get("entries"):
            lines += [f"{s['sender']}:", *_table(
                ["SEQ", "K", "RELEASE", "STATUS", "RECEIVED", "DIGEST"],
                [[str(e["seq"]), _scalar(e.get("k")), _scalar(e.get("release")),
                  _scalar(e.get("status")), _when(e.get("received")),
                  str(e.get("digest", ""))[:16]] for e in s["entries"]])]
    return "\n".join(lines)


def _when(unix: Any) -> str:
    import time

    return "-" if unix is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _ranges(ranges: list) -> str:
    """[[5, 7], [9, 9]] -> "5-7, 9"."""
    if not ranges:
        return "(none)"
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def format_budget(r: Mapping[str, Any]) -> str:
    lines = [f"budget: {_budget(r)}"]
    for e in r.get("entries", []):
        lines.append(f"  - epsilon {float(e['epsilon']):.2f}, delta {float(e['delta']):.3g}"
                     + (f": {e['note']}" if e.get("note") else ""))
    return "\n".join(lines)


def format_job(r: Mapping[str, Any]) -> str:
    lines = [str(r["message"])] if r.get("message") else []
    if "job" in r:
        lines.append(f"job: {_job(r['job'])}")
    rest = {k: v for k, v in r.items() if k not in ("message", "job")}
    if rest:
        lines.append(format_generic(rest))
    return "\n".join(lines) or "ok"


def format_screen(r: Mapping[str, Any]) -> str:
    """A job reply, with the per-peer verdicts as a table."""
    lines = [format_job({k: v for k, v in r.items() if k != "peers"})]
    if r.get("peers"):
        lines += _table(["PEER", "SCORE", "P", "P LOCAL", "P CONSENSUS", "FLAGGED", "REASON"],
                        [[p["peer"]] + [_scalar(p.get(key)) for key in
                                        ("score", "p_value", "p_local", "p_consensus",
                                         "flagged")] + [p.get("reason") or ""]
                         for p in r["peers"]])
    return "\n".join(lines)


def format_analyze(r: Mapping[str, Any]) -> str:
    """A job reply, with the summary table (`cli.summary`) of the finished analysis."""
    from twinnode.cli.summary import render

    marks = ("disagreeing", "moved_outside_local", "coefficients", "summary", "options",
             "replaced_by_local")
    lines = [format_job({k: v for k, v in r.items() if k not in marks})]
    if r.get("summary"):
        lines += ["", render(r["summary"]), ""]
    elif r.get("coefficients"):  # a node from before the summary table
        lines += _table(["TERM", "COMBINED", "SE", "LOCAL", "SE", "TWINS AGREE"],
                        [[term] + [_scalar(c.get(key)) for key in
                                   ("estimate", "se", "local_estimate", "local_se")]
                         + ["NO" if term in r.get("disagreeing", []) else "yes"]
                         for term, c in r["coefficients"].items()])
    if "disagreeing" in r:
        lines.append("twins alone vs local rows (Holm over the terms): "
                     + (f"disagree on {', '.join(r['disagreeing'])}" if r["disagreeing"]
                        else "no term disagrees"))
    if r.get("moved_outside_local"):
        lines.append("combined interval wholly outside the local one: "
                     + ", ".join(r["moved_outside_local"]))
    if r.get("options"):  # what was used: the call's arguments over node.toml's [analysis]
        lines.append("options: " + ", ".join(f"{k} {_scalar(r['options'].get(k))}" for k in (
            "weight", "rule", "heterogeneity", "interval", "level", "agreement_alpha",
            "on_disagreement")))
    return "\n".join(lines)


FORMATTERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "status": format_status, "peers": format_peers, "twins": format_twins,
    "budget": format_budget, "train": format_job, "publish": format_job,
    "screen": format_screen, "analyze": format_analyze, "shutdown": format_job,
}
