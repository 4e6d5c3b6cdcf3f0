"""What this process runs on: software versions and hardware, recorded with every run and study."""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def environment() -> dict[str, Any]:
    """Software versions and the hardware this process runs on."""
    import torch
    import torchvision

    from . import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transferlab": __version__, "platform": platform.platform(), "cpu": cpu, "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": ", ".join(gpus) or "none"}
