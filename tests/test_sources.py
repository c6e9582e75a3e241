"""Which files tagfind scans: --drivers folders, --root Windows trees matched without regard to
case, the live-system error off Windows, symlink loops and unreadable places. Real PE files from
libwine (see pe_factory), copied under tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pe_factory import (
    CONSOLE_DLL_SOURCE,
    GUI_EXE_SOURCE,
    NATIVE_DLL_SOURCE,
    is_root,
    pe_header,
)

from tagfind import sources
from tagfind.sources import SourcesError, discover, image_path_to_file, pe_subsystem


def put(wine: Path, source: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wine / source, target)
    return target


def test_off_windows_without_root_or_drivers_is_one_clear_line() -> None:
    with pytest.raises(SourcesError) as caught:
        discover(on_windows=False)
    assert str(caught.value) == (
        "no Windows here: use --root DIR (a Windows tree) or --drivers DIR"
    )


def test_drivers_folder_takes_sys_and_native_images_only(wine: Path, tmp_path: Path) -> None:
    top = tmp_path / "drv"
    expected = [
        put(wine, "winebus.sys", top / "winebus.sys"),
        put(wine, "hidclass.sys", top / "deep" / "er" / "HIDCLASS.SYS"),
        put(wine, NATIVE_DLL_SOURCE, top / "kernelish.dll"),  # native subsystem, not .sys
        put(wine, NATIVE_DLL_SOURCE, top / "noextension"),
    ]
    user_mode = [
        put(wine, CONSOLE_DLL_SOURCE, top / "version.dll"),
        put(wine, GUI_EXE_SOURCE, top / "sub" / "notepad.exe"),
    ]
    (top / "readme.txt").write_text("MZ but a text file")
    (top / "broken.dll").write_bytes(b"MZ" + b"\0" * 100)  # MZ, no PE header
    (top / "driver.inf").write_bytes((wine / NATIVE_DLL_SOURCE).read_bytes())  # never read

    found = discover(drivers=[str(top)])
    assert found.files == sorted(str(p) for p in expected)
    assert found.skipped == []

    everything = discover(drivers=[str(top)], all_pe=True)
    assert everything.files == sorted(str(p) for p in expected + user_mode)


def test_header_verdicts_spare_reads_only_for_the_same_size_and_mtime(wine: Path,
                                                                      tmp_path: Path) -> None:
    """Given a cache of header verdicts (the index's), a file found with the size and mtime
    of its verdict is judged by it, unread: shown with files whose bytes are no PE at all,
    which only a read would turn away. A changed mtime or size sends a file back to its
    header. The walk's verdicts (cached or read) come back for the cache, and, on POSIX, the
    stats of the files taken by them, for the refresh."""
    top = tmp_path / "drv"
    user = put(wine, CONSOLE_DLL_SOURCE, top / "version.dll")
    native = put(wine, NATIVE_DLL_SOURCE, top / "kernelish.dll")
    driver = put(wine, "winebus.sys", top / "winebus.sys")  # a .sys: no header, no verdict
    same = top / "same.dll"
    same.write_bytes(b"not a PE image, but its verdict says native")
    touched = top / "touched.dll"
    touched.write_bytes(b"not a PE image either")
    resized = top / "resized.dll"
    resized.write_bytes(b"not a PE image, once more")

    first = discover(drivers=[str(top)], verdicts={})
    assert first.files == sorted([str(native), str(driver)])
    assert first.headers_read == 5 and set(first.verdicts) == {
        str(p) for p in (user, native, same, touched, resized)}
    subsystems = {Path(p).name: v[2] for p, v in first.verdicts.items()}
    assert subsystems == {"version.dll": 3, "kernelish.dll": 1, "same.dll": None,
                          "touched.dll": None, "resized.dll": None}
    for path, (size, mtime_ns, _) in first.verdicts.items():
        assert (size, mtime_ns) == (os.stat(path).st_size, os.stat(path).st_mtime_ns)

    st = {p: p.stat() for p in (same, touched, resized)}
    cache = dict(first.verdicts)
    cache[str(same)] = (st[same].st_size, st[same].st_mtime_ns, 1)
    cache[str(touched)] = (st[touched].st_size, st[touched].st_mtime_ns - 1, 1)
    cache[str(resized)] = (st[resized].st_size + 1, st[resized].st_mtime_ns, 1)
    warm = discover(drivers=[str(top)], verdicts=cache)
    assert warm.files == sorted([str(native), str(driver), str(same)])
    assert warm.headers_read == 2  # touched.dll and resized.dll
    assert warm.verdicts[str(same)] == cache[str(same)]
    assert warm.verdicts[str(touched)][2] is None
    if os.name != "nt":
        assert sorted(warm.stats) == sorted([str(native), str(same)])
    everything = discover(drivers=[str(top)], all_pe=True, verdicts=cache)
    assert everything.files == sorted([str(native), str(driver), str(same), str(user)])

    plain = discover(drivers=[str(top)])  # no cache: every header read, nothing kept
    assert plain.files == first.files and plain.verdicts == {} and plain.headers_read == 0


def test_several_drivers_folders_and_duplicates_by_real_path(wine: Path, tmp_path: Path) -> None:
    a = put(wine, "usbd.sys", tmp_path / "a" / "usbd.sys")
    b = put(wine, "wineusb.sys", tmp_path / "b" / "wineusb.sys")
    (tmp_path / "b" / "same-as-a.sys").symlink_to(a)
    # The same folder twice, and a file given directly, count once.
    found = discover(
        drivers=[str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "a"), str(a)]
    )
    assert found.files == [str(a), str(b)]


def test_missing_drivers_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourcesError, match="not a directory"):
        discover(drivers=[str(tmp_path / "nope")])


def make_windows_tree(wine: Path, drive: Path) -> dict[str, Path]:
    """A Windows tree whose directory names are in unusual case, as on a Linux mount."""
    windows = drive / "WINDOWS"
    system32 = windows / "system32"
    return {
        "driver": put(wine, "winebus.sys", system32 / "DRIVERS" / "winebus.sys"),
        "nested": put(wine, "usbd.sys", system32 / "DRIVERS" / "sub" / "usbd.sys"),
        "store": put(
            wine,
            "wineusb.sys",
            system32 / "driverstore" / "FILEREPOSITORY" / "pkg.inf_amd64_1" / "wineusb.sys",
        ),
        "kernel": put(wine, NATIVE_DLL_SOURCE, system32 / "NTOSKRNL.EXE"),
        "hal": put(wine, NATIVE_DLL_SOURCE, system32 / "hal.dll"),
        "win32k": put(wine, "hidclass.sys", system32 / "win32kfull.sys"),
        # Named like a kernel image but user mode; native but not a kernel image name (autochk
        # is a native-subsystem program); a driver outside the layout:
        "fake_kd": put(wine, CONSOLE_DLL_SOURCE, system32 / "kdcom.dll"),
        "not_listed": put(wine, NATIVE_DLL_SOURCE, system32 / "autochk.exe"),
        "outside": put(wine, "hidclass.sys", windows / "Temp" / "x.sys"),
    }


def test_root_layout_matched_without_regard_to_case(wine: Path, tmp_path: Path) -> None:
    tree = make_windows_tree(wine, tmp_path)
    wanted = sorted(str(tree[k]) for k in ("driver", "nested", "store", "kernel", "hal", "win32k"))
    # The drive root, the Windows directory and System32 all name the same tree.
    for root in (tmp_path, tmp_path / "WINDOWS", tmp_path / "WINDOWS" / "system32"):
        found = discover(root=str(root))
        assert found.files == wanted, root


def test_root_without_windows_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "Users").mkdir()
    with pytest.raises(SourcesError, match="no Windows"):
        discover(root=str(tmp_path))
    with pytest.raises(SourcesError, match="not a directory"):
        discover(root=str(tmp_path / "missing"))


def test_symlink_loop_is_skipped_not_followed_forever(wine: Path, tmp_path: Path) -> None:
    top = tmp_path / "drv"
    driver = put(wine, "winebus.sys", top / "a" / "winebus.sys")
    (top / "a" / "loop").symlink_to(top)  # a -> .. -> a -> ...
    (top / "a" / "self").symlink_to(".")
    (top / "dangling.sys").symlink_to(tmp_path / "gone.sys")
    outside = put(wine, "usbd.sys", tmp_path / "elsewhere" / "usbd.sys")
    (top / "linked").symlink_to(tmp_path / "elsewhere")  # a link to another tree is followed

    found = discover(drivers=[str(top)])
    assert found.files == [str(driver), str(top / "linked" / "usbd.sys")]
    reasons = dict(found.skipped)
    assert reasons[str(top / "a" / "loop")] == "symlink loop"
    assert reasons[str(top / "a" / "self")] == "symlink loop"
    assert reasons[str(top / "dangling.sys")] == "broken symlink"
    assert outside.exists()


def test_unreadable_directory_and_file_are_recorded(wine: Path, tmp_path: Path) -> None:
    top = tmp_path / "drv"
    good = put(wine, "winebus.sys", top / "winebus.sys")
    locked_dir = top / "locked"
    put(wine, "usbd.sys", locked_dir / "usbd.sys")
    locked_file = put(wine, NATIVE_DLL_SOURCE, top / "locked.dll")
    locked_dir.chmod(0)
    locked_file.chmod(0)
    try:
        found = discover(drivers=[str(top)])
    finally:
        locked_dir.chmod(0o755)
        locked_file.chmod(0o644)
    if is_root():
        # root reads through chmod 000, so nothing is unreadable here: only check the walk
        # did not fail. The assertions below run for ordinary users.
        assert str(good) in found.files
        return
    assert found.files == [str(good)]
    reasons = dict(found.skipped)
    assert reasons[str(locked_dir)].startswith("unreadable directory")
    assert reasons[str(locked_file)].startswith("unreadable")


def test_pe_subsystem_reads_headers(tmp_path: Path) -> None:
    def subsystem_of(data: bytes) -> int | None:
        path = tmp_path / "f.bin"
        path.write_bytes(data)
        return pe_subsystem(str(path))

    assert subsystem_of(pe_header(subsystem=1)) == 1
    assert subsystem_of(pe_header(subsystem=3, magic=0x10B)) == 3  # PE32
    assert subsystem_of(pe_header(subsystem=1, e_lfanew=0x2000)) == 1  # header past 4 KB
    assert subsystem_of(pe_header(subsystem=1, magic=0x107)) is None  # ROM image
    assert subsystem_of(pe_header()[:0x90]) is None  # truncated
    assert subsystem_of(b"ZM" + pe_header()[2:]) is None
    assert subsystem_of(b"") is None
    damaged = bytearray(pe_header())
    damaged[0x3C:0x40] = b"\xff\xff\xff\x7f"  # e_lfanew far beyond the file
    assert subsystem_of(bytes(damaged)) is None


def test_kernel_image_names_are_data() -> None:
    assert "ntoskrnl.exe" in sources.SYSTEM32_KERNEL_IMAGES
    assert "hal*.dll" in sources.SYSTEM32_KERNEL_IMAGES


@pytest.mark.parametrize(
    ("image_path", "expected"),
    [
        ("\\SystemRoot\\System32\\drivers\\x.sys", ["W", "System32", "drivers", "x.sys"]),
        ("%SystemRoot%\\system32\\x.sys", ["W", "system32", "x.sys"]),
        ("System32\\DRIVERS\\x.sys", ["W", "System32", "DRIVERS", "x.sys"]),
        ("\\??\\C:\\Program Files\\V\\x.sys", "C:\\Program Files\\V\\x.sys"),
        ('"C:\\V\\x.sys"', "C:\\V\\x.sys"),
        ("\\Device\\Foo\\x.sys", None),
        ("", None),
    ],
)
def test_service_image_paths_become_files(image_path: str, expected) -> None:
    got = image_path_to_file(image_path, "W")
    if isinstance(expected, list):
        expected = os.path.join(*expected)
    assert got == expected
