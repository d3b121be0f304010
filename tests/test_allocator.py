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


def test_the_installed_torch_reading_never_crashes(monkeypatch):
    """No torch, a version string without numbers, metadata without a version: None (taken as a current torch),
    never an exception before training starts."""
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)
    for fake, want in ((missing, None), (lambda name: "nightly", None), (lambda name: None, None),
                       (lambda name: "2.9.0a0+git1234", (2, 9)), (lambda name: "1.13.1", (1, 13)),
                       (lambda name: "2.10.0", (2, 10))):
        monkeypatch.setattr(md, "version", fake)
        assert allocator.installed_torch() == want
    monkeypatch.setattr(md, "version", lambda name: "2.8.0+cu128")
    env = {"PYTORCH_ALLOC_CONF": "max_split_size_mb:64"}
    assert allocator.configure(env) == "max_split_size_mb:64" and env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64"


def test_the_runner_and_the_estimate_agree_on_what_torch_reads():
    """train/envdoctor_runner/allocator.configure (what the runner does) and envdoctor.training.allocator (what
    the check says it does) are two copies of one rule: on every combination of set, blank and absent variables
    and torch versions, the value torch will read after configure() is the one allocator_in_force judges, and
    its set_by names a variable of the user's holding that value."""
    import itertools

    from envdoctor.training import allocator as A
    values = (None, "", "max_split_size_mb:64", "expandable_segments:True")
    for combo in itertools.product(values, repeat=3):
        user = {k: v for k, v in zip(TORCH_READS, combo) if v is not None}
        for version in (OLD, CURRENT):
            env = dict(user)
            allocator.configure(env, version)
            reads = A.torch_reads(version)
            seen = next((env[k] for k in reads if k in env), None)
            got, set_by = A.allocator_in_force(user, "runner", version)
            assert got == ("expandable" if seen and "expandable_segments:True" in seen else "caching"), (user, version)
            if set_by:
                name, _, value = set_by.partition("=")
                assert user.get(name) == value.strip("'") == seen, (user, version, set_by)
            else:
                assert seen == allocator.SETTING, (user, version)
