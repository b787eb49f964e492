"""The ``vdc`` command: compress a model on this machine, run the service, manage API keys."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vdcore.presets import PRESETS
from worker.pipeline import ARTIFACTS, JobError, JobInput, JobOptions, run

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
    if args.spec:
        return {"spec": json.loads(Path(args.spec).read_text())}
    return {"preset": args.preset}


class _LiveView:
    """Progress events drawn as a rich progress bar with loss, KL, accuracy and sparsity."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(bar_width=12),
            TextColumn("{task.completed:.0f}/{task.total:.0f}"),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        stage = event["stage"]
        if "epoch" not in event:
            console.log(f"[bold]{stage}[/bold]")
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=event["epochs"], stats="")
        val = event["val_accuracy"]
        stats = (
            f"loss {event['data_loss']:.3f} kl {event['kl']:.3g} acc {event['train_accuracy']:.3f}"
            + (f"/{val:.3f}" if val is not None else "")
            + f" sparsity {event['sparsity']:.1%}"
        )
        self.progress.update(self.tasks[stage], completed=event["epoch"], stats=stats)


def _print_summary(report: dict[str, Any], out: Path) -> None:
    table = Table(title="compression", show_header=False)
    table.add_row("accuracy", f"{report['accuracy']['before']:.4f} -> {report['accuracy']['after']:.4f}")
    table.add_row("compression", f"{report['compression']:.1f}x ({report['sparsity']:.2%} of weights dropped)")
    table.add_row("units", f"{report['units']['before']} -> {report['units']['after']}")
    files = report["files"]
    table.add_row("ONNX bytes", f"{files['baseline.onnx']['bytes']:,} -> {files['model.onnx']['bytes']:,}")
    for name, row in report["latency"].items():
        table.add_row(
            f"latency {name}", f"{row['baseline_ms']:.3f} -> {row['compressed_ms']:.3f} ms ({row['speedup']:.2f}x)"
        )
    table.add_row("artifacts", ", ".join(str(out / name) for name in ARTIFACTS))
    Console().print(table)


def compress(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k in JobOptions.__dataclass_fields__ and v is not None}
    try:
        job = JobInput(
            model=_model_source(args),
            dataset=_dataset_source(args.dataset),
            weights=args.weights,
            options=JobOptions.from_dict(overrides),
        )
        view = _LiveView()
        with view.progress:
            report = run(job, args.out, on_progress=view)
    except (JobError, ValueError, OSError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        return 2
    _print_summary(report, Path(args.out))
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
    unless ``VDC_BROKER_URL`` is set, a broker in a folder, so nothing else needs to run."""
    import uvicorn

    from service.core.config import get_settings

    settings = get_settings()
    _sessions()  # migrate once, before the workers and the API start
    worker_command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
                      "--loglevel", "warning"]
    workers = [
        subprocess.Popen([*worker_command, "--hostname", f"vdc{i}@%h"], env=os.environ.copy())
        for i in range(args.workers)
    ]
    console.print(f"data in {settings.data_dir}; {args.workers} worker(s); API on http://{args.host}:{args.port}")
    console.print("create an API key with: vdc keys create --owner NAME")
    try:
        uvicorn.run("service.api.asgi:app", host=args.host, port=args.port, log_level="warning")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdc", description="Compress neural networks with Sparse Variational Dropout."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    local = commands.add_parser("compress", help="compress a model on this machine (no server)")
    model = local.add_mutually_exclusive_group()
    model.add_argument("--preset", default="lenet-300-100", choices=sorted(PRESETS), help="a named architecture")
    model.add_argument("--spec", help="a JSON file describing the architecture")
    local.add_argument("--weights", help="a safetensors file of the model's trained weights")
    local.add_argument("--dataset", default="digits", help="'digits', an .npz file, or a directory of MNIST IDX files")
    local.add_argument("--out", default="out", help="directory for the artifacts (default: out)")
    for name, default in JobOptions().to_dict().items():
        local.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), help=f"default {default}")
    local.set_defaults(handler=compress)

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
