"""The runner's allocator setting (train/envdoctor_runner/allocator.py): set unless the user chose one, and
never masked by a variable torch reads before the one set. torch reads the first of its variables that is
PRESENT, an empty one included (c10::utils::get_env: getenv != nullptr); which comes first differs between
versions (PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF), and ROCm builds read PYTORCH_HIP_ALLOC_CONF too."""

import sys

from envdoctor.assets import asset

sys.path.insert(0, str(asset("train")))
from envdoctor_runner import allocator  # noqa: E402

TORCH_READS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")
CURRENT, OLD = (2, 11), (2, 8)   # a torch that reads all three (first present wins); one that reads the CUDA one alone


def seen_by_torch(env, order):
    """What a torch that reads `order` first to last gets: the first variable present, empty or not."""
    return next((env[k] for k in order if k in env), None)


def test_nothing_set_gives_expandable_segments_to_every_torch():
    env = {}
    assert allocator.configure(env, CURRENT) == allocator.SETTING
    for order in (TORCH_READS, TORCH_READS[1:] + TORCH_READS[:1]):
        assert seen_by_torch(env, order) == allocator.SETTING


def test_a_users_setting_is_kept_whatever_variable_holds_it():
    for key in TORCH_READS:
        env = {key: "backend:cudaMallocAsync"}
        assert allocator.configure(env, CURRENT) == "backend:cudaMallocAsync"
        assert env == {key: "backend:cudaMallocAsync"}, key  # ROCm's variable too: not overridden


def test_an_empty_variable_does_not_mask_the_setting():
    """`export PYTORCH_ALLOC_CONF=` (empty) and no other: a torch reading PYTORCH_ALLOC_CONF first would
    take the empty value (the default allocator) over the PYTORCH_CUDA_ALLOC_CONF the runner set."""
    for key in TORCH_READS:
        env = {key: ""}
        setting = allocator.configure(env, CURRENT)
        for order in (TORCH_READS, TORCH_READS[1:] + TORCH_READS[:1]):
            assert seen_by_torch(env, order) == setting == allocator.SETTING, (key, order, env)


def test_an_empty_variable_does_not_mask_the_users_setting_either():
    """`export PYTORCH_ALLOC_CONF=` beside the user's PYTORCH_CUDA_ALLOC_CONF: torch ≥ 2.9 reads
    PYTORCH_ALLOC_CONF first, and would take the empty value (the default allocator) over the user's setting
    (which envdoctor's memory estimate, allocator.allocator_in_force, says is in force)."""
    for blank in TORCH_READS:
        for key in TORCH_READS:
            if key == blank:
                continue
            env = {blank: " ", key: "expandable_segments:True"}
            assert allocator.configure(env, CURRENT) == "expandable_segments:True"
            for order in (TORCH_READS, TORCH_READS[1:] + TORCH_READS[:1]):
                assert seen_by_torch(env, order) == "expandable_segments:True", (blank, key, order, env)


def test_with_an_older_torch_the_users_setting_is_copied_where_it_reads():
    """torch < 2.9 reads PYTORCH_CUDA_ALLOC_CONF alone: the user's setting in another variable is copied there
    (else the run silently gets torch's default allocator), and one already there is left alone."""
    for key in ("PYTORCH_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF"):
        env = {key: "max_split_size_mb:512"}
        assert allocator.configure(env, OLD) == "max_split_size_mb:512"
        assert env == {key: "max_split_size_mb:512", "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    env = {"PYTORCH_ALLOC_CONF": "max_split_size_mb:512", "PYTORCH_CUDA_ALLOC_CONF": "garbage_collection_threshold:0.6"}
    assert allocator.configure(env, OLD) == "garbage_collection_threshold:0.6" and len(env) == 2
    # a current torch reads PYTORCH_ALLOC_CONF first: nothing copied
    env = {"PYTORCH_ALLOC_CONF": "max_split_size_mb:512"}
    assert allocator.configure(env, CURRENT) == "max_split_size_mb:512" and env == {"PYTORCH_ALLOC_CONF": "max_split_size_mb:512"}
    # nothing set: the runner's own, in the variable every torch reads
    env = {}
    assert allocator.configure(env, OLD) == allocator.SETTING and env == {"PYTORCH_CUDA_ALLOC_CONF": allocator.SETTING}


def test_the_installed_torch_is_read_from_its_metadata_without_importing_it():
    import json
    import subprocess
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from envdoctor_runner import allocator; "
            "print(json.dumps([allocator.installed_torch(), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, str(asset("train"))], capture_output=True, text=True, timeout=60)
    got, imported = json.loads(out.stdout)
    try:
        from importlib.metadata import version
        want = [int(x) for x in version("torch").split("+")[0].split(".")[:2]]
    except Exception:  # noqa: BLE001 - no torch in this environment: None
        want = None
    assert got == want and imported is False
