"""How much memory a device has free: a GPU's (read through NVML when this process has no CUDA context yet, so that
asking costs nothing), or the RAM the kernel says is available.

Creating a CUDA context takes about 0.5 GB of the card for as long as the process lives. An app whose chat is served
remotely (`--backend-url`) never needs one, yet plans training jobs on the GPU: reading the free memory through
torch.cuda.mem_get_info would take that 0.5 GB from the very job it plans. NVML (the driver's management library,
the one `nvidia-smi` uses) answers without a context.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

NVML_LIBRARY = "libnvidia-ml.so.1"


def free_memory(device: str) -> int:
    """Bytes free on `device` ("cpu", "cuda" or "cuda:N"): the GPU's free memory, or the kernel's MemAvailable RAM."""
    if device.startswith("cuda"):
        return free_gpu_bytes(int(device.partition(":")[2] or 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # not Linux: no /proc

    return int(psutil.virtual_memory().available)


def free_gpu_bytes(index: int) -> int:
    """Bytes free on visible GPU `index`: through NVML while this process has no CUDA context, else (or when NVML
    cannot say) torch.cuda.mem_get_info."""
    import torch

    if not torch.cuda.is_initialized():
        free = nvml_free_bytes(index)
        if free is not None:
            return free
    free, _total = torch.cuda.mem_get_info(index)
    return int(free)


def _nvml_target(index: int) -> int | str | None:
    """NVML's name for visible GPU `index`: its NVML index or UUID; None when the mapping is not certain.

    CUDA numbers the GPUs CUDA_VISIBLE_DEVICES lets it see, fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID;
    NVML numbers every GPU in PCI bus order. One visible GPU, or bus order, maps for sure; MIG slices do not.
    """
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ and not visible:
        return None  # no GPU is visible at all
    entry = visible[index] if index < len(visible) else None
    if entry is not None and entry.startswith("GPU-"):
        return entry  # a UUID names one GPU whatever the order
    if entry is not None and entry.startswith("MIG-"):
        return None
    if len(visible) != 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and _nvml_count() != 1:
        return None
    if entry is None:
        return index
    return int(entry) if entry.isdigit() else None


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _load_nvml():
    """The NVML library, or None where there is none (no NVIDIA driver)."""
    try:
        return ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return None


def _nvml_count() -> int | None:
    """GPUs NVML sees, or None."""
    lib = _load_nvml()
    if lib is None or lib.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint()
        return None if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) else int(count.value)
    finally:
        lib.nvmlShutdown()


def nvml_free_bytes(index: int) -> int | None:
    """Bytes free on visible GPU `index` as NVML reports them (no CUDA context is made), or None when NVML cannot
    tell (no driver library, an unsure device mapping, an error)."""
    target = _nvml_target(index)
    lib = _load_nvml() if target is not None else None
    if lib is None or lib.nvmlInit_v2() != 0:
        return None
    try:
        handle = ctypes.c_void_p()
        if isinstance(target, str):
            status = lib.nvmlDeviceGetHandleByUUID(target.encode(), ctypes.byref(handle))
        else:
            status = lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(target), ctypes.byref(handle))
        memory = _Memory()
        if status or lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)):
            log.debug("NVML could not read GPU %s's memory", target)
            return None
        return int(memory.free)
    finally:
        lib.nvmlShutdown()
