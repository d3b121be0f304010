"""The remedy for an extension built here that no longer fits torch: rebuild from the source pip recorded
(direct_url.json), never a reinstall of the same build. Unit level, from distribution facts; the end to end
test (a real build, its remedy applied) is tests/test_remedy_local_build.py."""

from envdoctor.checks.binaries import remedy_for
from envdoctor.facts.binaries import Extension
from envdoctor.facts.torch_build import TorchFacts
from envdoctor.redact import redact_text
from envbuild import dist, pyenv

CPU = TorchFacts(True, "2.13.0+cpu", "cpu", None, cxx11_abi=True)
EXT = Extension("tinyext", "0.1", "/site/tinyext/_C.so", "tinyext/_C.so", "tinyext._C",
                missing=[{"mangled": "_ZN3c105goneEv", "demangled": "c10::gone()", "instead": []}])


def remedy(direct_url):
    py = pyenv(dist("torch", "2.13.0+cpu"), dist("tinyext", "0.1", direct_url=direct_url))
    return remedy_for(EXT, CPU, py, None, None)


def test_a_local_folder_is_rebuilt_from_that_folder():
    r = remedy({"url": "file:///home/me/src/tiny%20ext", "dir_info": {}})
    assert r.command == ("/venv/bin/python -m pip install --force-reinstall --no-deps --no-build-isolation "
                         "'/home/me/src/tiny ext'")
    assert r.fix_id is None and "torch 2.13.0+cpu" in r.text and "==0.1" not in r.command


def test_an_editable_checkout_is_rebuilt_editable():
    r = remedy({"url": "file:///src/tinyext", "dir_info": {"editable": True}})
    assert r.command.endswith("--no-build-isolation -e /src/tinyext")


def test_a_vcs_install_is_rebuilt_from_its_commit_with_its_subdirectory():
    r = remedy({"url": "https://github.com/o/tinyext.git", "subdirectory": "py",
                "vcs_info": {"vcs": "git", "commit_id": "0123abcd", "requested_revision": "main"}})
    assert r.command.endswith("--no-build-isolation 'git+https://github.com/o/tinyext.git@0123abcd#subdirectory=py'")


def test_vcs_credentials_are_not_printed_but_the_command_stays_copyable():
    token = "ghp_" + "a" * 36
    r = remedy({"url": f"https://{token}@github.com/o/tinyext.git", "vcs_info": {"vcs": "git", "commit_id": "abc"}})
    assert token not in r.command and token not in r.text
    assert r.command.endswith(" git+https://github.com/o/tinyext.git@abc")
    assert redact_text(r.command) == r.command  # what the report prints is what runs
    assert "carried credentials; they are not printed" in r.text


def test_ssh_git_user_is_kept():
    r = remedy({"url": "ssh://git@github.com/o/tinyext.git", "vcs_info": {"vcs": "git", "commit_id": "abc"}})
    assert "git+ssh://git@github.com/o/tinyext.git@abc" in r.command and "credentials" not in r.text


def test_a_secret_that_cannot_be_stripped_gives_no_command_and_says_why():
    r = remedy({"url": "https://host/o/tinyext.git?token=s3cr3tvalue", "vcs_info": {"vcs": "git", "commit_id": "abc"}})
    assert r.command is None and "s3cr3tvalue" not in r.text
    assert "not copyable as printed" in r.text and "token=***" in r.text


def test_without_direct_url_no_automatic_fix_and_never_the_same_build():
    r = remedy(None)
    assert r.command is None and r.fix_id is None
    assert "must be rebuilt from its source against torch 2.13.0+cpu" in r.text
    assert "no automatic fix exists" in r.text and "no direct_url.json" in r.text


def test_an_archive_or_wheel_url_is_no_automatic_fix():
    r = remedy({"url": "https://user:pw@files.example/tinyext-0.1-cp311-cp311-linux_x86_64.whl",
                "archive_info": {"hashes": {"sha256": "00"}}})
    assert r.command is None and "no automatic fix exists" in r.text and "installed from an archive" in r.text
    assert "pw" not in r.text.replace("pip", "")
