"""Before the window starts on Linux/X11: are the system libraries Qt's xcb platform plugin needs installed?

Without them Qt prints only "From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the Qt
xcb platform plugin" -- whichever library is really missing (on a minimal desktop it is usually
libxcb-icccm4 or libxcb-keysyms1) -- and aborts.  This check runs first and names the missing
libraries and the one ``apt-get`` line that installs them.

How: ``ldd`` on PySide6's ``platforms/libqxcb.so`` lists every library the plugin loads, its own
``libQt6XcbQpa.so.6``, QtGui and QtCore and all they need in turn, with ``=> not found`` for each
one the dynamic loader cannot find.  Where ``ldd`` is unavailable, each soname of
:data:`SONAME_PACKAGES` is opened with ``ctypes`` instead.  Nothing of Qt is imported here, so the
check works even when QtCore itself could not load.

:data:`SONAME_PACKAGES` maps a soname to the Debian/Ubuntu package that ships it; it was made by
running ``ldd`` on ``libqxcb.so`` and ``libQt6XcbQpa.so.6`` of PySide6 6.x and ``dpkg -S`` on each
library (Debian 12).  On Ubuntu 24.04 a few packages gained a ``t64`` suffix (``libglib2.0-0t64``);
``apt-get`` picks those for the names here by itself.  A soname missing from the table is named as
it is, with ``apt-file search`` as the way to find its package.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

EXIT_MISSING_LIBRARIES = 3  # beside the CLI's 0 ok, 1 failed, 2 usage, 130 cancelled
SKIP_VARIABLE = "LORA_STUDIO_SKIP_PLATFORM_CHECK"  # set to 1 to start Qt without this check

SONAME_PACKAGES: dict[str, str] = {
    # the xcb plugin's own X11 libraries: what a minimal desktop most often lacks
    "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-util.so.1": "libxcb-util1",
    "libxcb-randr.so.0": "libxcb-randr0",
    "libxcb-render.so.0": "libxcb-render0",
    "libxcb-shape.so.0": "libxcb-shape0",
    "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1",
    "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1",
    "libxcb.so.1": "libxcb1",
    "libX11-xcb.so.1": "libx11-xcb1",
    "libX11.so.6": "libx11-6",
    "libXau.so.6": "libxau6",
    "libXdmcp.so.6": "libxdmcp6",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
    # OpenGL, fonts, D-Bus and GLib: what QtGui and QtCore need
    "libGL.so.1": "libgl1",
    "libEGL.so.1": "libegl1",
    "libGLX.so.0": "libglx0",
    "libGLdispatch.so.0": "libglvnd0",
    "libfontconfig.so.1": "libfontconfig1",
    "libfreetype.so.6": "libfreetype6",
    "libpng16.so.16": "libpng16-16",
    "libexpat.so.1": "libexpat1",
    "libdbus-1.so.3": "libdbus-1-3",
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libpcre2-8.so.0": "libpcre2-8-0",
    "libz.so.1": "zlib1g",
    "libzstd.so.1": "libzstd1",
    "libstdc++.so.6": "libstdc++6",
    "libgcc_s.so.1": "libgcc-s1",
}  # fmt: skip

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)


@dataclass(frozen=True)
class MissingLibraries:
    """System libraries the xcb platform plugin needs and the loader cannot find."""

    sonames: tuple[str, ...]  # as ldd names them, e.g. "libxcb-icccm.so.4"

    @property
    def packages(self) -> tuple[str, ...]:
        """The Debian/Ubuntu packages that ship them, in order, each once (unknown sonames left out)."""
        return tuple(dict.fromkeys(SONAME_PACKAGES[s] for s in self.sonames if s in SONAME_PACKAGES))

    @property
    def unknown(self) -> tuple[str, ...]:
        """Sonames with no package in the table."""
        return tuple(s for s in self.sonames if s not in SONAME_PACKAGES)

    @property
    def install_command(self) -> str | None:
        """The one apt-get line that installs :attr:`packages` (None when none is known)."""
        return f"sudo apt-get install {' '.join(self.packages)}" if self.packages else None

    def message(self) -> str:
        """What the user reads instead of Qt's message: what is missing, and the fix."""
        lines = ["lora-studio: the window cannot start: Qt's X11 (xcb) platform plugin needs system libraries "
                 "that are not installed:"]
        lines += [f"  {s}" + (f"  (package {SONAME_PACKAGES[s]})" if s in SONAME_PACKAGES else "")
                  for s in self.sonames]
        if self.install_command:
            lines += ["Install them with (Debian/Ubuntu):", f"  {self.install_command}"]
        if self.unknown:
            lines.append(f"Find the package of {', '.join(self.unknown)} with `apt-file search NAME`.")
        lines += ["README.md, \"Set-up\", lists every system library the window needs; the command-line tools",
                  f"(`lora-studio --help`) need none of them.  Set {SKIP_VARIABLE}=1 to start Qt anyway."]
        return "\n".join(lines)


def xcb_plugin_path() -> Path | None:
    """PySide6's ``platforms/libqxcb.so``, found without importing Qt; None when it is not there."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        for plugins in (Path(root) / "Qt" / "plugins", Path(root) / "plugins"):  # wheel, some bundles
            plugin = plugins / "platforms" / "libqxcb.so"
            if plugin.is_file():
                return plugin
    return None


def will_use_xcb(environ: Mapping[str, str], platform: str | None = None) -> bool:
    """Whether Qt is about to load its xcb plugin: Linux (``platform``, default ``sys.platform``), and
    ``QT_QPA_PLATFORM`` is xcb, or unset with an X display and no Wayland session (Qt prefers its
    wayland plugin there)."""
    if not (platform or sys.platform).startswith("linux"):
        return False
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if chosen:
        first = chosen.split(";")[0].split(":")[0].strip()  # "xcb;wayland", "xcb:option=value"
        return first == "xcb"
    if not environ.get("DISPLAY"):
        return False
    return environ.get("XDG_SESSION_TYPE", "").lower() != "wayland"


def run_ldd(path: Path) -> str | None:
    """``ldd``'s output for ``path``; None when ldd is not installed or fails."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        done = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 or "not found" in done.stdout else None


def not_found_in_ldd(output: str) -> list[str]:
    """The sonames an ``ldd`` output marks ``=> not found``, in order, each once."""
    return list(dict.fromkeys(_NOT_FOUND.findall(output)))


def can_load(soname: str) -> bool:
    """Whether the dynamic loader finds and opens ``soname``."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def find_missing_libraries(
    plugin: Path,
    *,
    ldd: Callable[[Path], str | None] | None = None,
    load: Callable[[str], bool] | None = None,
) -> MissingLibraries | None:
    """The libraries ``plugin`` needs and the loader cannot find (None: nothing is missing).

    ``ldd`` (default :func:`run_ldd`) reads the whole dependency tree; when it gives nothing, each
    soname of the table is opened with ``load`` (default :func:`can_load`).
    """
    ldd, load = ldd or run_ldd, load or can_load
    output = ldd(plugin)
    if output is not None:
        missing = not_found_in_ldd(output)
    else:
        missing = [soname for soname in SONAME_PACKAGES if not load(soname)]
    return MissingLibraries(tuple(missing)) if missing else None


def check_platform_libraries(
    environ: Mapping[str, str] | None = None,
    *,
    plugin: Path | None = None,
    ldd: Callable[[Path], str | None] | None = None,
    load: Callable[[str], bool] | None = None,
    platform: str | None = None,
) -> MissingLibraries | None:
    """Run the check where it applies (Linux, xcb, not switched off); None when Qt may start."""
    environ = os.environ if environ is None else environ
    if environ.get(SKIP_VARIABLE) or not will_use_xcb(environ, platform):
        return None
    plugin = plugin or xcb_plugin_path()
    if plugin is None:
        return None  # not a PySide6 layout we know: Qt reports for itself
    return find_missing_libraries(plugin, ldd=ldd, load=load)

