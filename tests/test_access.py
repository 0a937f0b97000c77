"""CPU tier: every file lithos shares between processes (request signals, ledgers) is
created for its owner only, and opening one checks the owner, the mode and the kind of
file (another user's, one open to others and a symbolic link are refused)."""

from __future__ import annotations

import os
import stat

import pytest

from lithos_sched.ledger import Ledger, ledger_path
from lithos_sched.request_signal import RequestSignal


def test_a_request_signal_is_created_for_its_owner_only(tmp_path):
    with RequestSignal.create(tmp_path) as signal:
        info = signal.path.lstat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid() and stat.S_ISREG(info.st_mode)
        with RequestSignal.attach(signal.path) as other:  # the owner attaches
            assert other.open_requests == 0


def test_attaching_refuses_a_signal_of_another_user(tmp_path, monkeypatch):
    with RequestSignal.create(tmp_path) as signal:
        real = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real + 1)
        with pytest.raises(PermissionError, match=f"belongs to user id {real}, not to this user"):
            RequestSignal.attach(signal.path)


def test_attaching_refuses_a_signal_open_to_other_users(tmp_path):
    with RequestSignal.create(tmp_path) as signal:
        signal.path.chmod(0o620)
        with pytest.raises(PermissionError, match="open to other users .*mode 620"):
            RequestSignal.attach(signal.path)
        signal.path.chmod(0o600)


def test_attaching_refuses_a_link_to_a_signal(tmp_path):
    with RequestSignal.create(tmp_path) as signal:
        link = tmp_path / "lithos-requests-link"
        link.symlink_to(signal.path)
        with pytest.raises(OSError):
            RequestSignal.attach(link)


def test_a_ledger_refuses_a_symbolic_link_in_its_place(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    target.chmod(0o600)
    ledger_path("GPU-l", tmp_path).symlink_to(target)
    with pytest.raises(OSError):
        Ledger("GPU-l", 8, directory=tmp_path)
    assert target.read_bytes() == b""  # never written through the link
