"""Before Qt starts on X11, a missing system library is named with its package and the apt-get line
(app/platform_check.py), instead of Qt's misleading "xcb-cursor0" message."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_studio.app import platform_check, studio
from lora_studio.app.platform_check import (
    EXIT_MISSING_LIBRARIES,
    SKIP_VARIABLE,
    SONAME_PACKAGES,
    check_platform_libraries,
    find_missing_libraries,
    not_found_in_ldd,
    will_use_xcb,
    xcb_plugin_path,
)

PLUGIN = Path("/opt/PySide6/Qt/plugins/platforms/libqxcb.so")  # never opened: ldd is faked
LDD_ALL_FOUND = """\
\tlinux-vdso.so.1 (0x00007ffd3a5e8000)
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f2c1c000000)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007f2c1bf00000)
\tlibxcb-icccm.so.4 => /lib/x86_64-linux-gnu/libxcb-icccm.so.4 (0x00007f2c1be00000)
\tlibxcb-keysyms.so.1 => /lib/x86_64-linux-gnu/libxcb-keysyms.so.1 (0x00007f2c1bd00000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2c1c200000)
"""
LDD_ICCCM_MISSING = LDD_ALL_FOUND.replace(
    "libxcb-icccm.so.4 => /lib/x86_64-linux-gnu/libxcb-icccm.so.4 (0x00007f2c1be00000)",
    "libxcb-icccm.so.4 => not found",
)
X11 = {"DISPLAY": ":0"}


def test_a_missing_icccm_names_its_package_and_the_apt_get_line() -> None:
    missing = check_platform_libraries(X11, plugin=PLUGIN, ldd=lambda _: LDD_ICCCM_MISSING, platform="linux")
    assert missing is not None and missing.sonames == ("libxcb-icccm.so.4",)
    assert missing.packages == ("libxcb-icccm4",)
    message = missing.message()
    assert "libxcb-icccm4" in message
    assert "sudo apt-get install libxcb-icccm4" in [line.strip() for line in message.splitlines()]
    assert "xcb-cursor0" not in message  # Qt's misleading guess is not repeated


def test_nothing_missing_gives_no_message() -> None:
    assert check_platform_libraries(X11, plugin=PLUGIN, ldd=lambda _: LDD_ALL_FOUND, platform="linux") is None


def test_every_missing_library_is_named_once_in_one_apt_get_line() -> None:
    output = LDD_ICCCM_MISSING + "\tlibxcb-keysyms.so.1 => not found\n\tlibgthread-2.0.so.0 => not found\n" \
        "\tlibglib-2.0.so.0 => not found\n\tlibxcb-icccm.so.4 => not found\n\tlibfoo.so.9 => not found\n"
    missing = find_missing_libraries(PLUGIN, ldd=lambda _: output)
    assert missing.sonames == ("libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libgthread-2.0.so.0",
                               "libglib-2.0.so.0", "libfoo.so.9")
    assert missing.install_command == "sudo apt-get install libxcb-icccm4 libxcb-keysyms1 libglib2.0-0"
    assert missing.unknown == ("libfoo.so.9",) and "apt-file search" in missing.message()


def test_without_ldd_each_known_soname_is_opened() -> None:
    tried: list[str] = []

    def load(soname: str) -> bool:
        tried.append(soname)
        return soname != "libxcb-keysyms.so.1"

    missing = find_missing_libraries(PLUGIN, ldd=lambda _: None, load=load)
    assert tried == list(SONAME_PACKAGES)
    assert missing is not None and missing.packages == ("libxcb-keysyms1",)


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({"DISPLAY": ":0"}, "linux", True),
        ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "x11"}, "linux", True),
        ({"QT_QPA_PLATFORM": "xcb"}, "linux", True),
        ({"QT_QPA_PLATFORM": "xcb;wayland", "DISPLAY": ":0"}, "linux", True),
        ({}, "linux", False),  # no display: Qt's own "could not connect" is the right message
        ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"}, "linux", False),  # Qt picks wayland there
        ({"QT_QPA_PLATFORM": "offscreen", "DISPLAY": ":0"}, "linux", False),
        ({"QT_QPA_PLATFORM": "wayland", "DISPLAY": ":0"}, "linux", False),
        ({"DISPLAY": ":0"}, "darwin", False),
        ({"DISPLAY": ":0"}, "win32", False),
    ],
)
def test_the_check_runs_only_where_qt_loads_the_xcb_plugin(environ, platform, expected) -> None:
    assert will_use_xcb(environ, platform) is expected
    ran: list[Path] = []
    check_platform_libraries(environ, plugin=PLUGIN, ldd=lambda p: ran.append(p) or LDD_ICCCM_MISSING,
                             platform=platform)
    assert bool(ran) is expected


def test_the_check_can_be_switched_off() -> None:
    environ = {**X11, SKIP_VARIABLE: "1"}
    assert check_platform_libraries(environ, plugin=PLUGIN, ldd=lambda _: LDD_ICCCM_MISSING, platform="linux") is None


def test_on_this_machine_the_real_plugin_lacks_nothing() -> None:
    plugin = xcb_plugin_path()
    if plugin is None:
        pytest.skip("PySide6 here has no xcb plugin (not Linux)")
    assert plugin.name == "libqxcb.so" and plugin.is_file()
    assert find_missing_libraries(plugin) is None  # the xcb libraries are installed here (README, Set-up)


def test_every_table_soname_follows_the_soname_form() -> None:
    assert all(s.startswith("lib") and ".so." in s for s in SONAME_PACKAGES)
    assert not_found_in_ldd(LDD_ALL_FOUND) == []


def test_studio_prints_the_packages_and_exits_before_qt_starts(monkeypatch, capsys) -> None:
    monkeypatch.delenv(SKIP_VARIABLE, raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(platform_check.sys, "platform", "linux")
    monkeypatch.setattr(platform_check, "xcb_plugin_path", lambda: PLUGIN)
    monkeypatch.setattr(platform_check, "run_ldd", lambda _: LDD_ICCCM_MISSING)
    started: list[object] = []
    monkeypatch.setattr("PySide6.QtWidgets.QApplication.exec", lambda *a: started.append(a) or 0)
    assert studio.main([]) == EXIT_MISSING_LIBRARIES
    err = capsys.readouterr().err
    assert "sudo apt-get install libxcb-icccm4" in err and "libxcb-icccm.so.4" in err
    assert started == []  # no event loop: the window never opened
