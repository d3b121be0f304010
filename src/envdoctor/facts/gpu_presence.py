"""Does the platform itself show an NVIDIA GPU, whatever NVML and nvidia-smi say?

When the GPU tools crash, hang or print nonsense, "no GPU" would be a lie that turns every GPU check into a
skip. These signals come from the kernel, not from the tools (docs/gpu-presence.md):

* Linux: /proc/driver/nvidia (the nvidia module is loaded), /dev/nvidia0… (device nodes), and a PCI display
  or 3D controller of vendor 0x10de whose driver is `nvidia`. A GPU bound to vfio-pci (passed to a VM) or to
  no driver is not usable here, so it is not a signal.
* WSL2: /dev/dxg (GPU paravirtualization) together with the Windows NVIDIA driver's libcuda under
  /usr/lib/wsl/lib (an AMD or Intel GPU gives /dev/dxg without it).
"""

from __future__ import annotations

import re

from envdoctor.system import System

NVIDIA_VENDOR = "0x10de"
# PCI class 0x03xxxx: display controllers (0x0300 VGA, 0x0302 3D). The GPU's HDMI audio function (0x0403)
# and USB-C controller (0x0c03) share the vendor id but are not GPUs.
_DISPLAY_CLASS = re.compile(r"^0x03[0-9a-f]{4}$")
_DEV_NODE = re.compile(r"^nvidia\d+$")


def _pci_gpus(system: System) -> list[tuple[str, str | None]]:
    """(PCI address, bound driver or None) of every NVIDIA display controller."""
    found = []
    for dev in system.listdir("/sys/bus/pci/devices"):
        base = f"/sys/bus/pci/devices/{dev}"
        vendor = (system.read_text(f"{base}/vendor", 64) or "").strip().lower()
        cls = (system.read_text(f"{base}/class", 64) or "").strip().lower()
        if vendor != NVIDIA_VENDOR or not _DISPLAY_CLASS.match(cls):
            continue
        link = system.path(f"{base}/driver")
        try:
            driver = link.resolve().name if link.exists() else None
        except OSError:
            driver = None
        found.append((dev, driver))
    return found


def gpu_presence(system: System) -> list[str]:
    """Each signal of an NVIDIA GPU usable on this machine, as a line for a report; [] when none."""
    signals = []
    if system.is_dir("/proc/driver/nvidia"):
        gpus = system.listdir("/proc/driver/nvidia/gpus")
        signals.append("/proc/driver/nvidia: the nvidia kernel module is loaded"
                       + (f" ({len(gpus)} GPU(s) in /proc/driver/nvidia/gpus)" if gpus else ""))
    nodes = [n for n in system.listdir("/dev") if _DEV_NODE.match(n)]
    if nodes:
        signals.append(f"device nodes: {', '.join('/dev/' + n for n in nodes)}")
    bound = [dev for dev, driver in _pci_gpus(system) if driver == "nvidia"]
    if bound:
        signals.append(f"PCI: {', '.join(bound)} (vendor 0x10de, display controller, driver nvidia)")
    if system.exists("/dev/dxg") and any(f.startswith("libcuda.so") for f in system.listdir("/usr/lib/wsl/lib")):
        signals.append("WSL2: /dev/dxg and the Windows NVIDIA driver's libcuda in /usr/lib/wsl/lib")
    return signals


def unusable_gpus(system: System) -> list[str]:
    """NVIDIA GPUs on the PCI bus that this machine cannot use (vfio-pci: passed to a VM; no driver)."""
    return [f"PCI {dev}: NVIDIA GPU bound to {driver or 'no driver'}"
            + (" (passed through to a VM: not usable here)" if driver and driver.startswith("vfio") else "")
            for dev, driver in _pci_gpus(system) if driver != "nvidia"]
