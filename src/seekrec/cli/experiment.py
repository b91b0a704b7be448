"""``seekrec experiment status | advance | stop | rollback`` (a running server's experiments, admin) and
``seekrec experiment report`` (tables and plots rebuilt from the server's logs)."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from seekrec.cli.options import HELP_FORMAT


def _shares(text: str) -> dict[str, float]:
    """``control=0.5,treatment=0.5`` -> ``{"control": 0.5, "treatment": 0.5}``."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, share = part.partition("=")
        try:
            out[name] = float(share)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--shares {text!r}: write arm=share pairs, e.g. control=0.5,treatment=0.5")
    return out


KEY_ENV = "SEEKREC_API_KEY"  # the admin key the commands send (Authorization: Bearer)


def _call(url: str, method: str, path: str, key: str | None, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON request to the server; a refusal or an unreachable server is one line naming it."""
    request = urllib.request.Request(url.rstrip("/") + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        hint = f" (set {KEY_ENV} to an admin key)" if exc.code in (401, 403) else ""
        raise ValueError(f"{method} {path}: HTTP {exc.code}: {detail}{hint}") from exc
    except urllib.error.URLError as exc:
        raise ValueError(f"cannot reach the server at {url}: {exc.reason}; check --url") from exc


def format_status(status: dict[str, Any]) -> str:
    """The layers, their experiments and arms, and each rollout's stage, status and last decision."""
    lines = []
    for layer in status["layers"]:
        lines.append(f"layer {layer['name']}")
        for exp in layer["experiments"]:
            arms = ", ".join(f"{a['name']}" + (f" ({a['version']})" if a.get("version") else "")
                             + (f" {a['share']:.0%}" if a.get("share") else "") for a in exp["arms"])
            lines.append(f"  {exp['name']}: {arms}")
            rollout = status["rollouts"].get(exp["name"])
            if exp.get("rollout"):
                if rollout is None:
                    lines.append("    rollout: not started")
                    continue
                last = rollout.get("last_decision") or {}
                lines.append(f"    rollout: stage {rollout['stage']}/{rollout['steps']} "
                             f"({rollout.get('treatment_share', 0):.0%} of users), {rollout['status']}; last: "
                             f"{last.get('action', '-')} ({'; '.join(last.get('reasons', [])) or '-'})")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    print(format_status(_call(args.url, "GET", "/experiments", os.environ.get(KEY_ENV))))
    return 0


def cmd_act(args: argparse.Namespace) -> int:
    status = _call(args.url, "POST", f"/experiments/{args.name}/{args.action}", os.environ.get(KEY_ENV),
                   {"reason": args.reason})
    print(format_status(status))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from seekrec.experiments.report import build_report, format_report, load_outcomes, plot_report
    from seekrec.io import atomic_write_json

    for flag, url in (("--outcome-log", args.outcome_log), ("--event-log", args.event_log)):
        path = url.split("://", 1)[1].split("?")[0] if url.startswith("sqlite://") else url
        if "://" not in path and not Path(path).is_file():
            raise ValueError(f"{flag} {url}: no such file; pass the log the server wrote")
    if args.control is None and not args.interleaved:
        raise ValueError("--control is required (the arm every other arm is compared with), unless --interleaved")
    outcomes = load_outcomes(args.outcome_log, args.event_log, window_s=args.window_s)
    if not outcomes:
        raise ValueError(f"{args.outcome_log}: no served list logged; check --outcome-log (the server's "
                         "--outcome-log, by default <event log>-served.db beside its event log)")
    if args.interleaved:
        from seekrec.experiments.report import format_interleaving, interleaving_report

        found = interleaving_report(outcomes, args.layer)
        if found is None:
            raise ValueError(f"no interleaved list of experiment {args.layer!r} in {args.outcome_log}; check --layer")
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "report.json", found)
        print(format_interleaving(found))
        return 0
    catalog = args.catalog_size or len({item for o in outcomes for item in o.served.items})
    report = build_report(outcomes, args.layer, args.control, catalog_size=catalog, expected_shares=args.shares,
                          bucket_s=args.bucket_s, tau2=args.tau2)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "report.json", report.to_dict())
    plot_report(report, args.out / "report.png")
    print(format_report(report))
    print(f"report: {args.out / 'report.json'}  plots: {args.out / 'report.png'}")
    return 0


def add_experiment_commands(commands: argparse._SubParsersAction) -> None:
    ex = commands.add_parser("experiment", help="a server's experiments and rollouts: status, advance, stop, "
                             "rollback, report", formatter_class=HELP_FORMAT)
    actions = ex.add_subparsers(dest="action", required=True, metavar="ACTION")
    st = actions.add_parser("status", help="layers, arms and each rollout's stage (GET /experiments)",
                            formatter_class=HELP_FORMAT,
                            epilog=f"example:\n  {KEY_ENV}=KEY seekrec experiment status --url http://127.0.0.1:8000\n")
    st.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: http://127.0.0.1:8000)")
    st.set_defaults(func=cmd_status)
    for action, what in (("advance", "move a rollout to its next stage (or resume it)"),
                         ("stop", "freeze a rollout at its stage"), ("rollback", "put every user back on control")):
        ap = actions.add_parser(action, help=f"{what} (admin key in {KEY_ENV})", formatter_class=HELP_FORMAT)
        ap.add_argument("name", help="the rollout experiment")
        ap.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: http://127.0.0.1:8000)")
        ap.add_argument("--reason", default="", help="recorded in the rollout's history (default: none)")
        ap.set_defaults(func=cmd_act)
    rp = actions.add_parser(
        "report", help="per-arm tables, CTR over time with confidence bands, the always-valid p-value, SRM",
        formatter_class=HELP_FORMAT,
        epilog="example:\n  seekrec experiment report --outcome-log runs/demo/events-served.db "
               "--event-log runs/demo/events.db --layer default --control frozen --shares frozen=0.5,realtime=0.5\n")
    rp.add_argument("--outcome-log", required=True, help="the server's outcome log (path or url)")
    rp.add_argument("--event-log", required=True, help="the server's event log (path or url)")
    rp.add_argument("--layer", default="default", help="the layer (a plain A/B server: its experiment name) "
                    "(default: default)")
    rp.add_argument("--control", help="the control arm every other arm is compared with (required unless "
                    "--interleaved)")
    rp.add_argument("--interleaved", action="store_true",
                    help="the layer is an interleaving experiment: report the users' preference and its sign test")
    rp.add_argument("--shares", type=_shares, default=None,
                    help="configured traffic shares for the sample-ratio check, e.g. control=0.5,treatment=0.5 "
                         "(default: no check)")
    rp.add_argument("--window-s", type=float, default=1800.0,
                    help="attribution window: an event credits a list served at most this long before (default: 1800)")
    rp.add_argument("--bucket-s", type=float, default=10.0, help="seconds between points of the plots (default: 10)")
    rp.add_argument("--tau2", type=float, default=1e-4,
                    help="mSPRT mixture variance in CTR units squared, fixed before looking (default: 1e-4)")
    rp.add_argument("--catalog-size", type=int, default=0,
                    help="items in the catalogue, for coverage (default: the items seen in the served lists)")
    rp.add_argument("--out", type=Path, default=Path("runs") / "experiment-report",
                    help="where report.json and report.png go (default: runs/experiment-report)")
    rp.set_defaults(func=cmd_report)
