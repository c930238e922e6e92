"""GPU discovery and utilisation through NVML. No NVML or no GPU means a CPU node, never an error."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int
    name: str
    uuid: str
    memory_total_bytes: int


@dataclass(frozen=True, slots=True)
class GpuUsage:
    utilization: float  # mean over GPUs, 0..1
    memory_used_bytes: int


class GpuProbe:
    """Opens NVML once; `gpus` is empty when there is no driver or no device."""

    def __init__(self) -> None:
        self.gpus: tuple[GpuInfo, ...] = ()
        self._nvml = None
        self._handles: list[object] = []
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver missing...
            log.info("no NVML, running as a CPU node", extra={"reason": repr(exc)})
            return
        self._nvml = pynvml
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            self._handles.append(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            found.append(
                GpuInfo(
                    index=i,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    memory_total_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        self.gpus = tuple(found)
        log.info("GPUs found", extra={"gpus": [g.name for g in self.gpus]})

    def usage(self) -> GpuUsage:
        if self._nvml is None or not self._handles:
            return GpuUsage(0.0, 0)
        nvml = self._nvml
        try:
            utils = [nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100 for h in self._handles]
            used = sum(int(nvml.nvmlDeviceGetMemoryInfo(h).used) for h in self._handles)
        except Exception as exc:
            log.warning("GPU usage unreadable", extra={"error": repr(exc)})
            return GpuUsage(0.0, 0)
        return GpuUsage(sum(utils) / len(utils), used)


def cpu_utilization() -> float:
    """One-minute load average per core, capped at 1."""
    try:
        return min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 0.0
