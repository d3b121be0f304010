"""The runner's allocator setting (train/envdoctor_runner/allocator.py): set unless the user chose one, and
never masked by a variable torch reads before the one set. torch reads the first of its variables that is
PRESENT, an empty one included (c10::utils::get_env: getenv != nullptr); which comes first differs between
versions (PYTORCH_ALLOC_CONF or PYTORCH_CUDA_ALLOC_CONF), and ROCm builds read PYTORCH_HIP_ALLOC_CONF too."""

import sys

from envdoctor.assets import asset

sys.path.insert(0, str(asset("train")))
from envdoctor_runner import allocator  # noqa: E402

TORCH_READS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")


def seen_by_torch(env, order):
    """What a torch that reads `order` first to last gets: the first variable present, empty or not."""
    return next((env[k] for k in order if k in env), None)


def test_nothing_set_gives_expandable_segments_to_every_torch():
    env = {}
    assert allocator.configure(env) == allocator.SETTING
    for order in (TORCH_READS, TORCH_READS[1:] + TORCH_READS[:1]):
        assert seen_by_torch(env, order) == allocator.SETTING


def test_a_users_setting_is_kept_whatever_variable_holds_it():
    for key in TORCH_READS:
        env = {key: "backend:cudaMallocAsync"}
        assert allocator.configure(env) == "backend:cudaMallocAsync"
        assert env == {key: "backend:cudaMallocAsync"}, key  # ROCm's variable too: not overridden


def test_an_empty_variable_does_not_mask_the_setting():
    """`export PYTORCH_ALLOC_CONF=` (empty) and no other: a torch reading PYTORCH_ALLOC_CONF first would
    take the empty value (the default allocator) over the PYTORCH_CUDA_ALLOC_CONF the runner set."""
    for key in TORCH_READS:
        env = {key: ""}
        setting = allocator.configure(env)
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
            assert allocator.configure(env) == "expandable_segments:True"
            for order in (TORCH_READS, TORCH_READS[1:] + TORCH_READS[:1]):
                assert seen_by_torch(env, order) == "expandable_segments:True", (blank, key, order, env)
