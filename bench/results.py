"""What every benchmark writes: the machine, the command that ran, and a section appended to RESULTS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} intra-op threads), {platform.python_implementation()} "
        f"{platform.python_version()}"
    )


def command_line() -> str:
    """This process's command as someone would type it from the repository's root."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def append_section(title: str, lines: list[str]) -> str:
    """Append ``## <date> - title`` and ``lines`` to RESULTS.md; returns the text written."""
    heading = f"## {dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} - {title}"
    text = "\n".join([heading, "", *lines]) + "\n"
    with RESULTS.open("a") as f:
        f.write(f"\n{text}")
    return text
