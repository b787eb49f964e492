"""The ``vdc`` command: compress a model on this machine, run the service, manage API keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as ProgressBars
from rich.table import Table

from recipe.options import OBJECTIVES, JobOptions, add_option_flags, given_options
from recipe.pipeline import ARTIFACTS, JobError, JobInput, run
from recipe.progress import Progress
from recipe.report import SHORTFALL_UNITS, Report
from service.client import ApiError, Client
from service.states import FINISHED, JobState
from vdcore.presets import PRESETS

# How long ``vdc serve`` lets its workers finish on shutdown before killing them; a job they were running is
# taken up again from its checkpoint (the job store's lease runs out).
WORKER_STOP_S = 20

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

console = Console(stderr=True)


def _dataset_source(value: str) -> dict[str, str]:
    """``digits`` names a built-in set; a ``.npz`` path is arrays; a directory holds MNIST IDX files."""
    path = Path(value)
    if path.suffix == ".npz":
        return {"npz": value}
    if path.is_dir():
        return {"idx_dir": value}
    return {"builtin": value}


def _model_source(args: argparse.Namespace) -> dict[str, Any]:
    if args.onnx:
        return {"onnx": args.onnx}
    if args.spec:
        return {"spec": json.loads(Path(args.spec).read_text())}
    return {"preset": args.preset, **dict(args.preset_option or [])}


def _preset_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON (``hidden_size=64``, ``input_shape=[100]``), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. hidden_size=64), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


class _LiveView:
    """Progress events drawn as a rich progress bar with loss, KL, accuracy and sparsity."""

    def __init__(self) -> None:
        self.progress = ProgressBars(
            TextColumn("{task.description:<11}"),
            BarColumn(bar_width=12),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, tuple[TaskID, int]] = {}  # stage -> (bar, epochs)
        self.stage: str | None = None

    def __call__(self, progress: Progress) -> None:
        """Takes the pipeline's events and, when watching a server, its polled progress (repeats are fine)."""
        stage = progress.stage
        if stage != self.stage and stage not in self.tasks:
            console.log(f"[bold]{stage}[/bold]")
            for task, total in self.tasks.values():  # a stage that ended did all its epochs, seen or not
                self.progress.update(task, completed=total)
        self.stage = stage
        if progress.epoch is None or progress.epochs is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = (self.progress.add_task(stage, total=progress.epochs, stats=""), progress.epochs)
        val = progress.val_accuracy
        stats = (
            f"loss {progress.data_loss:.3f} kl {progress.kl:.3g} acc {progress.train_accuracy:.3f}"
            + (f"/{val:.3f}" if val is not None else "")
            + f" sparsity {progress.sparsity:.1%}"
        )
        self.progress.update(self.tasks[stage][0], completed=progress.epoch, stats=stats)


def _print_summary(report: Report, out: Path) -> None:
    table = Table(title="compression", show_header=False)
    table.add_row(f"accuracy ({report.accuracy.measured_on})",
                  f"{report.accuracy.before:.4f} -> {report.accuracy.after:.4f}")
    test = report.test_accuracy
    table.add_row("accuracy (test)", "no test split: the figure above is on the data the threshold was chosen on"
                  if test is None else f"{test.before:.4f} -> {test.after:.4f}")
    table.add_row("compression", f"{report.compression:.1f}x ({report.sparsity:.2%} of weights dropped)")
    table.add_row("units", f"{report.units.before} -> {report.units.after}")
    if report.tradeoff is not None:
        table.add_row("threshold", _curve_position(report))
        if report.tradeoff.met is not None:
            table.add_row("objective", _objective_outcome(report.tradeoff.objective, report.tradeoff.value,
                                                          report.tradeoff.met, report.tradeoff.shortfall))
    if report.early_stop is not None:
        stop = report.early_stop
        table.add_row("early stop", f"ran all {report.options.epochs} epochs (patience {stop.patience})"
                      if stop.stopped_after_epoch is None else f"after epoch {stop.stopped_after_epoch} of "
                      f"{report.options.epochs}: {stop.epochs_saved} saved (patience {stop.patience})")
    files = report.files
    table.add_row("ONNX bytes", f"{files['baseline.onnx'].bytes:,} -> {files['model.onnx'].bytes:,}")
    for name, row in report.latency.items():
        table.add_row(
            f"latency {name}", f"{row.baseline_ms:.3f} -> {row.compressed_ms:.3f} ms ({row.speedup:.2f}x)"
        )
    table.add_row("artifacts", ", ".join(str(out / name) for name in ARTIFACTS))
    Console().print(table)


def _curve_position(report: Report) -> str:
    """Where the shipped threshold sits on the measured curve: its neighbours' compression and accuracy."""
    tradeoff = report.tradeoff
    points = tradeoff.candidates
    at = next(i for i, p in enumerate(points) if p.threshold == tradeoff.chosen.threshold)
    shown = [f"{p.threshold:g}: {p.compression:.1f}x at {p.accuracy:.4f}" for p in points[max(0, at - 1):at + 2]]
    chosen = tradeoff.chosen
    deployed = "" if chosen.latency_ms is None else (
        f"; exported before fine-tuning: {chosen.file_bytes:,} bytes, {chosen.latency_ms:.3f} ms per batch of "
        f"{tradeoff.latency_batch}")
    return (f"log alpha {chosen.threshold:g} (point {at + 1} of {len(points)} measured, lowest threshold "
            f"first; before fine-tuning {' | '.join(shown)}{deployed}; tradeoff.png draws them all)")


def _objective_outcome(kind: str | None, value: float | None, met: bool | None, shortfall: float | None) -> str:
    if met:
        return f"{kind} {value:g}: met"
    return f"{kind} {value:g}: missed by {shortfall:.3g}{SHORTFALL_UNITS[kind]} (the closest network measured " \
        "is shipped)"


def _fail(message: object) -> int:
    console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True)
    return 2


def _option_errors(error: ValidationError) -> str:
    """Pydantic's errors in the command line's words: each names the flag to change."""
    lines = []
    for problem in error.errors():
        flag = f"--{str(problem['loc'][0]).replace('_', '-')}: " if problem["loc"] else ""
        lines.append(flag + problem["msg"].removeprefix("Value error, "))
    return "; ".join(lines)


def compress(args: argparse.Namespace) -> int:
    try:
        options = JobOptions(**given_options(args))
    except ValidationError as error:
        return _fail(_option_errors(error))
    try:
        job = JobInput(
            model=_model_source(args), dataset=_dataset_source(args.dataset), weights=args.weights, options=options
        )
        view = _LiveView()
        with view.progress:
            report = run(job, args.out, on_progress=view)
    except (JobError, ValueError, OSError) as error:
        return _fail(error)
    _print_summary(report, Path(args.out))
    return 0


def _client(args: argparse.Namespace) -> Client:
    if not args.key:
        raise ApiError("no API key: pass --key or set VDC_API_KEY (create one with `vdc keys create`)")
    return Client(args.server, args.key)


def _watch(client: Client, job_id: str, interval: float = 1.0) -> int:
    """Follow a job until it finishes; 0 if it succeeded."""
    view = _LiveView()
    with view.progress:
        while (job := client.job(job_id))["state"] not in FINISHED:
            if job["progress"]:
                view(Progress.model_validate(job["progress"]))
            time.sleep(interval)
    if job["state"] != JobState.SUCCEEDED:
        return _fail(f"job {job_id} {job['state']}" + (f": {job['error']}" if job["error"] else ""))
    progress = job["progress"] or {}
    if progress.get("objective_met") is not None:
        options = job["request"]["options"]
        kind = next(name for name in OBJECTIVES if options.get(name) is not None)
        console.print(_objective_outcome(kind, options[kind], progress["objective_met"],
                                         progress["objective_shortfall"]))
    console.print(f"job {job_id} succeeded; get its files with: vdc download {job_id}")
    return 0


def submit(args: argparse.Namespace) -> int:
    dataset_file = args.dataset if args.dataset.endswith(".npz") else None
    request = {
        "model": None if args.onnx else _model_source(args),
        "dataset": None if dataset_file else {"builtin": args.dataset},
        "options": given_options(args),
    }
    try:
        client = _client(args)
        job = client.submit(request, args.weights, dataset_file, args.idempotency_key, model=args.onnx)
        print(job["id"])
        return _watch(client, job["id"]) if args.watch else 0
    except (ApiError, OSError) as error:
        return _fail(error)


def status(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
        if args.id is None:
            for job in client.jobs()["items"]:
                print(f"{job['id']}  {job['state']:<10} {job['created_at']}")
            return 0
        print(json.dumps(client.job(args.id), indent=2))
    except ApiError as error:
        return _fail(error)
    return 0


def watch(args: argparse.Namespace) -> int:
    try:
        return _watch(_client(args), args.id)
    except ApiError as error:
        return _fail(error)


def download(args: argparse.Namespace) -> int:
    try:
        for path in _client(args).download(args.id, Path(args.out), args.name or None):
            print(path)
    except (ApiError, OSError) as error:
        return _fail(error)
    return 0


def cancel(args: argparse.Namespace) -> int:
    try:
        job = _client(args).cancel(args.id)
    except ApiError as error:
        return _fail(error)
    print(f"{job['id']}  {job['state']}" + ("  (stopping)" if job["cancel_requested"] else ""))
    return 0


def _sessions() -> sessionmaker[Session]:
    """The configured database, migrated. Imported late, so that `vdc compress` loads no database code."""
    from service.core.config import get_settings
    from service.db import create_db_engine, create_sessionmaker, upgrade_database

    settings = get_settings()
    upgrade_database(settings.database_url)
    return create_sessionmaker(create_db_engine(settings.database_url))


def keys(args: argparse.Namespace) -> int:
    from service.keys import create_api_key, list_api_keys, revoke_api_key

    with _sessions()() as session:
        if args.action == "create":
            print(create_api_key(session=session, owner=args.owner, name=args.name))
            console.print("Keep this key: only its hash is stored, it cannot be shown again.")
        elif args.action == "list":
            for key in list_api_keys(session=session, owner=args.owner):
                state = "revoked" if key.revoked_at else "active"
                print(f"{key.id}  {key.owner:<16} {key.name:<16} {key.prefix}...  {state}")
        elif revoke_api_key(session=session, key_id=args.id) is None:
            console.print(f"[red]error:[/red] no active key {escape(args.id)}", soft_wrap=True)
            return 2
    return 0


def serve(args: argparse.Namespace) -> int:
    """The API and its workers on this machine: the same code as a deployment, with SQLite, local files and,
    unless ``VDC_BROKER_URL`` is set, a broker in a folder, so nothing else needs to run. Workers that die are
    started again (``service.supervisor``)."""
    import uvicorn

    from service.core.config import get_settings
    from service.db import upgrade_database
    from service.supervisor import Supervisor

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    upgrade_database(settings.database_url)  # once, before the workers and the API start
    worker_command = [sys.executable, "-m", "celery", "-A", "worker.tasks", "worker", "--pool", "solo",
                      "--loglevel", "warning"]
    workers = Supervisor(
        {f"worker vdc{i}": [*worker_command, "--hostname", f"vdc{i}@%h"] for i in range(args.workers)},
        env=os.environ.copy(),
    )
    workers.start()
    console.print(f"data in {settings.data_dir}; {args.workers} worker(s); API on http://{args.host}:{args.port}")
    console.print("create an API key with: vdc keys create --owner NAME")
    # uvicorn stops on SIGTERM, then raises it again; its default action would end this process before the
    # workers below are stopped, and they would run on, orphaned. Exiting instead runs the ``finally``.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        uvicorn.run("service.api.asgi:app", host=args.host, port=args.port, log_level="warning")
    finally:
        workers.stop(timeout_s=WORKER_STOP_S)
    return 0


def _job_arguments(parser: argparse.ArgumentParser, dataset_help: str) -> None:
    """What a job is made of, the same for a local run and a submitted one."""
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", default="lenet-300-100", choices=sorted(PRESETS), help="a named architecture")
    model.add_argument("--spec", help="a JSON file describing the architecture")
    model.add_argument("--onnx", help="the network as an ONNX file (torch.onnx.export's), holding its weights")
    parser.add_argument("--preset-option", action="append", type=_preset_option, metavar="KEY=VALUE",
                        help="a preset's option, repeatable: e.g. vocabulary=20000 or input_shape=[100]")
    parser.add_argument("--weights", help="a safetensors file of the model's trained weights")
    parser.add_argument("--dataset", default="digits", help=dataset_help)
    add_option_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdc", description="Compress neural networks with Sparse Variational Dropout."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("compress", help="compress a model on this machine (no server)")
    _job_arguments(local, "'digits', an .npz file, or a directory of MNIST IDX files")
    local.add_argument("--out", default="out", help="directory for the artifacts (default: out)")
    local.set_defaults(handler=compress)

    remote = commands.add_parser("submit", help="submit a job to a server and print its id")
    _job_arguments(remote, "'digits' or an .npz file to upload")
    remote.add_argument("--idempotency-key", help="a retried submit with the same key returns the same job")
    remote.add_argument("--watch", action="store_true", help="then follow it with a progress bar")
    remote.set_defaults(handler=submit)
    for name, handler, about in (
        ("status", status, "a job's state and progress as JSON (without an id: your recent jobs)"),
        ("watch", watch, "follow a job with a progress bar until it finishes"),
        ("download", download, "save a job's artifacts"),
        ("cancel", cancel, "cancel a queued or running job"),
    ):
        command = commands.add_parser(name, help=about)
        command.add_argument("id", nargs="?" if name == "status" else None)
        if name == "download":
            command.add_argument("--out", default=".", help="directory to save into (default: .)")
            command.add_argument("--name", action="append", help="one artifact (repeatable); default: all")
        command.set_defaults(handler=handler)
    for command in (remote, *(commands.choices[n] for n in ("status", "watch", "download", "cancel"))):
        command.add_argument("--server", default=os.environ.get("VDC_SERVER", "http://127.0.0.1:8000"))
        command.add_argument("--key", default=os.environ.get("VDC_API_KEY"), help="API key (or VDC_API_KEY)")

    server = commands.add_parser("serve", help="run the API and workers on this machine (no Redis or PostgreSQL)")
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--workers", type=int, default=1, help="worker processes, one job each at a time")
    server.set_defaults(handler=serve)

    key_parser = commands.add_parser("keys", help="create, list or revoke API keys (in the configured database)")
    key_actions = key_parser.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="create a key and print it once")
    create.add_argument("--owner", required=True, help="the owner whose jobs the key can see")
    create.add_argument("--name", default="default", help="a label for the key")
    listing = key_actions.add_parser("list", help="list keys (never their secret)")
    listing.add_argument("--owner")
    revoke = key_actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id")
    key_parser.set_defaults(handler=keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
