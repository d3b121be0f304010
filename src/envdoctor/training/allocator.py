"""Which of torch's CUDA allocator settings a training run gets: the variables torch reads (which, in which
order, by torch version), what envdoctor's runner and `axolotl train` set before torch reads them, and the
values torch refuses. Pure string logic on an environment mapping: the doctor never imports torch."""

from __future__ import annotations

import re
from collections.abc import Mapping

# torch's allocator variables, in the order torch ≥ 2.9 reads them: the first one PRESENT decides — a blank one
# too — and the others are not even parsed (a value torch would refuse there raises nothing). Measured on torch
# 2.11.0+cu130 (H200, 2026-12-01, 21 combinations: bench/results/README.md): PYTORCH_CUDA_ALLOC_CONF before ROCm's
# PYTORCH_HIP_ALLOC_CONF (read on CUDA builds too) before PYTORCH_ALLOC_CONF; torch 2.9 and 2.10 are taken to
# read alike (not measured). torch < 2.9 on CUDA reads PYTORCH_CUDA_ALLOC_CONF alone (c10/cuda/CUDAAllocatorConfig.h).
ALLOC_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
NEW_READER = (2, 9)   # the first torch that reads PYTORCH_ALLOC_CONF (and PYTORCH_HIP_ALLOC_CONF on CUDA)
RUNNER_SETTING = ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # train/envdoctor_runner/allocator.py
# axolotl's set_pytorch_cuda_alloc_conf (`axolotl train`, before anything imports torch; the same rule in 0.13.1
# and 0.19.0): with torch ≥ 2.9 PYTORCH_ALLOC_CONF when it is unset (os.getenv is None: a blank one counts as
# set), else — and with torch 2.2-2.8 — PYTORCH_CUDA_ALLOC_CONF when that is unset. torch reads a
# PYTORCH_CUDA_ALLOC_CONF of the user's first: axolotl's setting then does not count
AXOLOTL_SETTINGS = (("PYTORCH_ALLOC_CONF", "expandable_segments:True"),
                    ("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True,roundup_power2_divisions:16"))


def torch_reads(torch_version: tuple[int, int] | None = None) -> tuple[str, ...]:
    """The allocator variables a torch of `torch_version` (major, minor; None: a current one) reads, first to last."""
    return ALLOC_VARS if torch_version is None or tuple(torch_version) >= NEW_READER else ("PYTORCH_CUDA_ALLOC_CONF",)


# The options torch's parser takes True or False for, and nothing else: it raises at the first CUDA allocation
# (measured, torch 2.11: ValueError "Expected 'True' or 'False' at index 2 in ConfigTokenizer but got 'true'";
# older c10 CUDAAllocatorConfig: "Expected a single True/False argument for <option>").
BOOLEAN_OPTIONS = ("expandable_segments", "release_lock_on_cudamalloc", "pinned_use_cuda_host_register",
                   "pinned_use_background_threads")


def _tokens(value: str) -> list[str]:
    """torch's ConfigTokenizer: whitespace dropped, ',' ':' '[' ']' are tokens of their own."""
    return [t for t in re.split(r"([,:\[\]])", "".join(value.split())) if t]


def refused(value: str) -> tuple[str, str] | None:
    """(why torch refuses this allocator setting when CUDA starts, the value with every refused option mended) or
    None. Only the boolean options are judged: `expandable_segments:true` kills every CUDA program at its first
    allocation. A mended value keeps what was meant: 0, no, off, false (any case, and what starts so) → False,
    anything else True."""
    tokens = _tokens(value)
    out, whys, i = [], [], 0
    while i < len(tokens):
        token = tokens[i]
        if token not in BOOLEAN_OPTIONS or tokens[i + 1:i + 2] != [":"]:
            out.append(token)
            i += 1
            continue
        j = i + 2                                   # the value: one token, or a [ … ] list
        if tokens[j:j + 1] == ["["]:
            end = tokens.index("]", j) + 1 if "]" in tokens[j:] else len(tokens)
        else:
            end = j + 1 if j < len(tokens) and tokens[j] not in ",:[]" else j
        given = "".join(tokens[j:end])
        if given in ("True", "False"):
            out += tokens[i:end]
        else:
            meant = given.strip("[]").lower()
            out += [token, ":", "False" if meant.startswith(("0", "n", "off", "f")) else "True"]
            whys.append(f"{token}:{given or '(nothing)'}")
        i = end
    if not whys:
        return None
    options = sorted({w.partition(":")[0] for w in whys})
    return (f"{', '.join(whys)}: torch takes only True or False there and raises at the first CUDA allocation "
            f"(torch 2.11: \"Expected 'True' or 'False' … in ConfigTokenizer\"; older: \"Expected a single "
            f"True/False argument for {' / '.join(options)}\")", "".join(out))


def async_backend(value: str) -> bool:
    """`backend:cudaMallocAsync`: CUDA's stream-ordered pool allocator instead of torch's own (its reserve was
    never measured by envdoctor)."""
    tokens = _tokens(value)
    return any(tokens[i:i + 3] == ["backend", ":", "cudaMallocAsync"] for i in range(len(tokens)))


def _run_env(env: Mapping[str, str | None], engine: str, reads: tuple[str, ...]
             ) -> tuple[dict[str, str], dict[str, str]]:
    """(the user's allocator variables, those the run's torch sees once the engine has set its own)."""
    user = {k: env[k] for k in ALLOC_VARS if env.get(k) is not None}
    run = dict(user)
    if engine == "runner":
        run = {k: v for k, v in user.items() if v.strip()}
        if not run:
            run = dict([RUNNER_SETTING])
        elif reads == ("PYTORCH_CUDA_ALLOC_CONF",):  # torch < 2.9: the runner copies the user's setting there
            run.setdefault("PYTORCH_CUDA_ALLOC_CONF", next(iter(run.values())))
    else:
        for name, value in AXOLOTL_SETTINGS:
            if name not in run and (name in reads or name == "PYTORCH_CUDA_ALLOC_CONF"):
                run[name] = value
                break
    return user, run


def refused_in_force(env: Mapping[str, str], engine: str = "runner", torch_version: tuple[int, int] | None = None
                     ) -> tuple[str, str, str] | None:
    """(the variable torch will read in the run, why torch refuses its value, the mended value) or None."""
    reads = torch_reads(torch_version)
    user, run = _run_env(env, engine, reads)
    name = next((k for k in reads if run.get(k) is not None), None)
    why = refused(run[name]) if name else None
    if name and why and user.get(name) != run[name]:  # the runner copied it there (torch < 2.9): name the user's
        name = next((k for k in ALLOC_VARS if user.get(k) == run[name]), name)
    return (name, *why) if name and why else None


def _torch_reads(env: Mapping[str, str | None], reads: tuple[str, ...] = ALLOC_VARS) -> tuple[str, str | None]:
    """(the allocator torch sets up from `env` as it is, the variable it reads or None)."""
    name = next((k for k in reads if env.get(k) is not None), None)
    if name is None:
        return "caching", None
    # the last expandable_segments wins; only True and False are taken (anything else makes torch raise when
    # CUDA starts: refused() says so)
    tokens = _tokens(env[name])
    on = False
    for i, token in enumerate(tokens[:-2]):
        if token == "expandable_segments" and tokens[i + 1] == ":":
            on = tokens[i + 2] == "True"
    return ("expandable" if on else "caching"), name


def torch_allocator(env: Mapping[str, str | None], torch_version: tuple[int, int] | None = None
                    ) -> tuple[str, str | None]:
    """(the allocator a process started with `env` gets from torch when nothing changes the variables first — a
    plain training loop, bench/calibrate_memory.py —, the variable that decides it as NAME='value' or None).
    Unset: torch's default caching allocator."""
    allocator, name = _torch_reads(env, torch_reads(torch_version))
    return allocator, (f"{name}={env[name]!r}" if name else None)


def allocator_in_force(env: Mapping[str, str], engine: str = "runner",
                       torch_version: tuple[int, int] | None = None) -> tuple[str, str | None]:
    """(the allocator a run started from `env` trains under, the user's variable that decides it as
    NAME='value', or None when the engine's own setting decides). Each engine changes the variables before torch reads
    them: the runner drops blank ones and, when none is left, sets PYTORCH_CUDA_ALLOC_CONF to expandable
    segments, and with a torch older than 2.9 copies the user's setting into PYTORCH_CUDA_ALLOC_CONF when it
    is in another variable (train/envdoctor_runner/allocator.py); `axolotl train` ("peft", "hf-loop", "hf-trainer") sets
    PYTORCH_ALLOC_CONF when it is unset and torch is ≥ 2.9 — which torch reads only when the user set neither
    PYTORCH_CUDA_ALLOC_CONF nor PYTORCH_HIP_ALLOC_CONF — else PYTORCH_CUDA_ALLOC_CONF when that is unset
    (AXOLOTL_SETTINGS).
    Then torch reads the first of its variables present (torch_reads: `torch_version`, None for a current
    torch); expandable segments are on only for `expandable_segments:True`."""
    reads = torch_reads(torch_version)
    user, run = _run_env(env, engine, reads)
    allocator, name = _torch_reads(run, reads)
    if name in user and user[name] == run[name]:
        return allocator, f"{name}={user[name]!r}"
    # the runner copied the user's setting into the variable an older torch reads: that setting decides
    copied = next((k for k in ALLOC_VARS if engine == "runner" and name and k in user and k not in reads
                   and user[k] == run[name]), None)
    return allocator, (f"{copied}={user[copied]!r}" if copied else None)
