"""Where flash-attn's prebuilt release wheels live and which one fits a torch: shared by the
binaries checks (the printed remedy) and repair/plan.py (the fix), so neither imports the other."""

from __future__ import annotations

from envdoctor.facts.python_env import PythonEnv
from envdoctor.facts.torch_build import TorchFacts

FA_WHEEL_URL = ("https://github.com/Dao-AILab/flash-attention/releases/download/v{version}/"
                "flash_attn-{version}+cu{cuda_major}torch{torch_minor}cxx11abi{abi}-cp{py}-cp{py}-linux_x86_64.whl")


def flash_attn_wheel_url(version: str, torch: TorchFacts, python: PythonEnv, pattern: str = FA_WHEEL_URL) -> str:
    """The release wheel flash-attn's own setup.py would look for. `envdoctor fix` takes another pattern
    from ENVDOCTOR_FLASH_ATTN_WHEEL_URL (a mirror, a wheel house)."""
    abi = "TRUE" if torch.cxx11_abi else "FALSE"
    cu = (torch.cuda or "12").split(".")[0]
    py = "".join(map(str, python.version[:2]))
    return pattern.format(version=version, cuda_major=cu, torch_minor=torch.minor, abi=abi, py=py)
