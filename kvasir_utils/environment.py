"""Where a result was computed: versions and hardware, for the record."""

from __future__ import annotations

import os
import platform
import sys


def environment() -> dict:
    """Python, torch and torchvision versions, the platform, CPU and GPU."""
    import torch
    import torchvision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
        "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "gpu": gpu,
    }
