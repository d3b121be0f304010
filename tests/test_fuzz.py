"""A fast slice of bench/fuzz.py: seeded hostile inputs for every reader; no traceback may escape.
`python bench/fuzz.py` runs 1,000 of each kind."""

import importlib.util
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envdoctor.facts.gpu import parse_smi_csv
from envdoctor.facts.toolkit import parse_nvcc_version, parse_version_json
from envdoctor.safetensors_header import HeaderError, read_header

_spec = importlib.util.spec_from_file_location("fuzz", Path(__file__).parent.parent / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("kind", fuzz.KINDS)
def test_no_traceback_from_hostile_inputs(kind):
    log = io.StringIO()
    assert fuzz.run([kind], cases=60, seed=15, out=log) == {kind: 0}, log.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789., \n-[]NA/abcdefGPU:"), max_size=300))
def test_nvidia_smi_parser_takes_any_text(text):
    driver, gpus, bad = parse_smi_csv(text)
    assert all(g.cc is None or all(isinstance(x, int) for x in g.cc) for g in gpus)
    assert (driver is None) == (not gpus)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2 ** 40))
def test_safetensors_header_takes_any_bytes(data, size):
    try:
        read_header(data, size)
    except HeaderError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_nvcc_parsers_take_any_text(text):
    for v in (parse_version_json(text), parse_nvcc_version(text)):
        assert v is None or all(p.isdigit() for p in v.split("."))
