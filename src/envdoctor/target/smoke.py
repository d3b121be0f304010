"""Smoke tests, run by the *target* interpreter: `python -c <this source> --envdoctor-smoke STAGE`.

One stage per process (a segfault in bitsandbytes cannot take the torch test down with it). Prints
one JSON line: {"status": ok|warn|fail|skip, "message", "details", "data", "seconds"}.
"""

import importlib.util
import json
import logging
import sys
import time
import traceback
import warnings


def stage_torch():
    import torch
    data = {"version": torch.__version__, "cuda": torch.version.cuda,
            "arch_list": torch.cuda.get_arch_list() if hasattr(torch.cuda, "get_arch_list") else []}
    if not torch.cuda.is_available():
        torch.cuda.init()  # raises with the reason ("Found no NVIDIA driver", "driver too old", ...)
        return "fail", "torch.cuda.is_available() is False", [], data
    dev = torch.cuda.current_device()
    data["device"] = torch.cuda.get_device_name(dev)
    data["capability"] = list(torch.cuda.get_device_capability(dev))
    data["device_count"] = torch.cuda.device_count()
    a = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    c = a @ a
    torch.cuda.synchronize()
    if not torch.isfinite(c).all():
        return "fail", "a bf16 matmul on the GPU gave non-finite values", [], data
    return "ok", "CUDA init and a bf16 matmul on %s" % data["device"], [], data


def stage_bitsandbytes():
    import torch
    import bitsandbytes as bnb
    data = {"version": getattr(bnb, "__version__", "?")}
    lin = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4").cuda()
    x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = lin(x)
    y.float().sum().backward()
    torch.cuda.synchronize()
    if x.grad is None or not torch.isfinite(x.grad).all() or not torch.isfinite(y).all():
        return "fail", "NF4 forward/backward gave no or non-finite values", [], data
    return "ok", "bitsandbytes %s NF4 Linear4bit forward and backward on the GPU" % data["version"], [], data


def stage_flash_attn():
    import torch
    from flash_attn import __version__ as version, flash_attn_func
    q = torch.randn(1, 16, 2, 64, device="cuda", dtype=torch.bfloat16)
    out = flash_attn_func(q, q, q, causal=True)
    torch.cuda.synchronize()
    data = {"version": version}
    if not torch.isfinite(out).all():
        return "fail", "flash_attn_func gave non-finite values", [], data
    return "ok", "flash-attn %s forward on the GPU" % version, [], data


def stage_torchao():
    import torchao
    data = {"version": getattr(torchao, "__version__", "?")}
    return "ok", "torchao %s imports" % data["version"], [], data


STAGES = {"torch": ("torch", stage_torch), "bitsandbytes": ("bitsandbytes", stage_bitsandbytes),
          "flash_attn": ("flash_attn", stage_flash_attn), "torchao": ("torchao", stage_torchao)}


class _Records(logging.Handler):
    def __init__(self):
        logging.Handler.__init__(self, logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run(stage):
    module, fn = STAGES[stage]
    start = time.time()
    if importlib.util.find_spec(module) is None:
        return {"status": "skip", "message": "%s is not installed" % module, "details": [], "data": {},
                "seconds": 0.0}
    logs = _Records()
    logging.getLogger().addHandler(logs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            status, message, details, data = fn()
        except Exception as exc:  # the whole point: report it
            tb = traceback.format_exc().strip().splitlines()
            status, message, details, data = "fail", "%s: %s" % (type(exc).__name__, exc), tb[-6:], {}
    noise = []
    for line in [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()] + logs.lines:
        if line not in noise:
            noise.append(line)
    if status == "ok" and any("not compatible" in n or "Skipping import of cpp extensions" in n for n in noise):
        status = "warn"
    return {"status": status, "message": message, "details": details + noise[:5], "data": data,
            "seconds": round(time.time() - start, 3)}


if __name__ == "__main__":
    sys.stdout.write(json.dumps(run(sys.argv[sys.argv.index("--envdoctor-smoke") + 1])) + "\n")
