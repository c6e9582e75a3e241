"""The x64 scanner against real MSVC-built drivers: WinDivert64.sys from two pydivert wheels.

WinDivert allocates with one tag, WINDIVERT_TAG = 'viDW' (ULONG 0x76694457, tag "WDiv"), and
frees with the same tag. The wheels are downloaded with pip into the test cache
($TAGFIND_TEST_CACHE, default ~/.cache/tagfind-tests) and the driver is extracted with zipfile;
a SHA-256 pins the exact binary the addresses below belong to.

How the expected sites were obtained (by reading the disassembly, not from tagfind): a throwaway
script with pefile + capstone took the IAT slots of ExAllocatePoolWithTag / ExFreePoolWithTag,
decoded every .pdata function and the whole .text, and listed every instruction with a
rip-relative operand pointing at one of those slots (there are no register-loaded or CFG-dispatch
uses of them, and no rel32 calls to a thunk for them). For each one the instructions leading to
it were read by hand:
- every ExAllocatePoolWithTag call is preceded in its block by `mov r8d, 0x76694457`;
- every ExFreePoolWithTag call by `mov edx, 0x76694457`; 0x7fa5 in 2.2 is a tail call
  `rex.w jmp [rip+IAT]` (48 FF 25);
- WinDivert 2.2 reads the pool type from a global (`mov ecx, [rip+...]`, NonPagedPoolNx or
  NonPagedPool chosen at run time): pool is not an immediate. WinDivert 1.3 passes
  NonPagedPool as `xor ecx, ecx`: pool 0;
- sizes are immediates only where listed (`mov edx, 0x70`, `mov edx, 0x77`, `mov edx, 0xc00`);
  the others are computed (`lea`, `shl`, copies of arguments).
MmBuildMdlForNonPagedPool takes no tag. WinDivert 1.3 creates its NET_BUFFER_LIST pool with
NdisAllocateNetBufferListPool(NULL, &params) at 0x14c5, after `mov dword ptr [rsp+0x40],
0x76694457` into the parameters at [rsp+0x38] (PoolTag is at +8): a tagged-api site, hand-checked
in the disassembly. WinDivert 2.2 calls it through a MinGW-style import thunk (`call 0xbbfc`) at
0x331e, the tag stored as `mov qword ptr [rbp+0x78], 0x76694457` into the parameters at
[rbp+0x70]: the same site, hand-checked too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import skip_or_fail
from fixtures.expect import format_key, site_key
from fixtures.pecheck import Image, check_function_field, check_site

from tagfind.scan import scan_file

WDIV = 0x76694457  # 'viDW' -> "WDiv"
ALLOC, FREE = "ExAllocatePoolWithTag", "ExFreePoolWithTag"


def _frees(*rvas: int) -> list[tuple[int, str, str, int | None, int | None]]:
    return [(rva, FREE, "free", None, None) for rva in rvas]


# (rva, api, evidence, pool, size); every site has tag WDiv and no PROTECTED bit.
WINDIVERT_2_2_SITES = [
    (0x777F, ALLOC, "call", None, None),
    (0x7DA0, ALLOC, "call", None, 0x70),
    (0x99A9, ALLOC, "call", None, None),
    (0x9A0B, ALLOC, "call", None, 0x77),
    (0x9A82, ALLOC, "call", None, None),
    (0xB812, ALLOC, "call", None, None),
    *_frees(0x295A, 0x4D81, 0x4E5B, 0x5425, 0x5461, 0x7911, 0x7E99, 0x7F28, 0x7FA5, 0x7FCF),
    *_frees(0x8B3D, 0x96C8, 0x9790, 0x97BD, 0x9AC1, 0xA028, 0xA3C9, 0xA42E, 0xAE34, 0xAE88),
    *_frees(0xB07C, 0xB8A9, 0xBA32, 0xBAE8),
    (0x331E, "NdisAllocateNetBufferListPool", "tagged-api", None, None),
]

WINDIVERT_1_3_SITES = [
    (0x2648, ALLOC, "call", 0, None),
    (0x3486, ALLOC, "call", 0, None),
    (0x3601, ALLOC, "call", 0, None),
    (0x4337, ALLOC, "call", 0, 0xC00),
    (0x455B, ALLOC, "call", 0, None),
    *_frees(0x1FB3, 0x20D6, 0x218C, 0x24A6, 0x261F, 0x3534, 0x358A, 0x37A3, 0x3821, 0x457F),
]

DRIVERS = {
    # pydivert 4.0.1, win_amd64 wheel: WinDivert 2.2 driver.
    "pydivert-4.0.1": dict(
        pip_args=["--only-binary=:all:", "--platform", "win_amd64", "pydivert==4.0.1"],
        member="pydivert/windivert_dll/WinDivert64.sys",
        sha256="8da085332782708d8767bcace5327a6ec7283c17cfb85e40b03cd2323a90ddc2",
        sites=WINDIVERT_2_2_SITES,
    ),
    # pydivert 2.1.0, pure-python "any" wheel: WinDivert 1.3 driver (x64 and x86 inside).
    "pydivert-2.1.0": dict(
        pip_args=["--only-binary=:all:", "pydivert==2.1.0"],
        member="pydivert/windivert_dll/WinDivert64.sys",
        sha256="9026147943bd44a1eb5e2f0c89cc8f441c7d1f13c1571aba54e262d2e7354798",
        sites=[*WINDIVERT_1_3_SITES,
               (0x14C5, "NdisAllocateNetBufferListPool", "tagged-api", None, None)],
    ),
}


def _download_driver(cache: Path, name: str) -> Path:
    spec = DRIVERS[name]
    out = cache / "windivert" / name / Path(spec["member"]).name
    if out.exists() and hashlib.sha256(out.read_bytes()).hexdigest() == spec["sha256"]:
        return out
    wheel_dir = cache / "wheels" / name
    wheel_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += [*spec["pip_args"], "-d", str(wheel_dir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            skip_or_fail(f"pip download of {name} failed: {exc}")
        wheels = sorted(wheel_dir.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            skip_or_fail(f"pip download of {name} failed:\n{proc.stdout}{proc.stderr}")
    with zipfile.ZipFile(wheels[0]) as zf:
        data = zf.read(spec["member"])
    digest = hashlib.sha256(data).hexdigest()
    assert digest == spec["sha256"], (
        f"{spec['member']} in {wheels[0].name} has SHA-256 {digest}, not the binary whose "
        "disassembly the expected sites were read from"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


@pytest.fixture(scope="module", params=sorted(DRIVERS))
def windivert(request, test_cache):
    name = request.param
    path = _download_driver(test_cache, name)
    return name, path, scan_file(str(path))


def test_scan_succeeds(windivert):
    _, path, result = windivert
    assert result.error is None, result.error
    assert result.arch == "x64"
    assert result.path == str(path)


def test_sites_are_exactly_the_verified_ones(windivert):
    name, _, result = windivert
    expected = {
        rva: (api, WDIV, evidence, False, pool, size, 0, ())
        for rva, api, evidence, pool, size in DRIVERS[name]["sites"]
    }
    reported = {}
    duplicates = []
    for site in result.sites:
        if site.rva in reported:
            duplicates.append(site.rva)
        reported[site.rva] = site_key(site)
    problems = [f"{rva:#x} reported more than once" for rva in duplicates]
    for rva, key in sorted(expected.items()):
        if rva not in reported:
            problems.append(f"missing {rva:#x}: {format_key(key)}")
        elif reported[rva] != key:
            problems.append(
                f"{rva:#x}: reported {format_key(reported[rva])}, expected {format_key(key)}"
            )
    for rva in sorted(set(reported) - set(expected)):
        problems.append(f"unexpected {rva:#x}: {format_key(reported[rva])}")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_only_tag_is_wdiv(windivert):
    _, _, result = windivert
    assert {site.tag for site in result.sites} == {WDIV}


def test_site_addresses_hold_the_call(windivert):
    _, path, result = windivert
    image = Image(str(path))
    problems = []
    for site in result.sites:
        problems += check_site(image, site) + check_function_field(image, site)
    assert not problems, "\n".join(problems)


def test_learned_facts_come_from_the_code(windivert):
    """data/learned.txt (shipped inside data/pooltag.txt) states what the scanner learns from
    this driver: tools/learn_tags.py on it gives lines that the file holds."""
    spec = importlib.util.spec_from_file_location(
        "learn_tags", Path(__file__).resolve().parents[1] / "tools" / "learn_tags.py")
    learn_tags = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learn_tags)
    _, path, _ = windivert
    learned = learn_tags.learn([path])
    assert learned == [f"WDiv - {path.name}"]
    shipped = (Path(__file__).resolve().parents[1] / "data" / "learned.txt").read_text()
    assert set(learned) <= set(shipped.splitlines())


def test_exception_handlers_as_pefile_reads_them(windivert):
    """PEImage.has_exception_handler (which keeps switch-case handling off functions with
    SEH handler blocks) against pefile's own UNWIND_INFO parse, chains followed."""
    import pefile

    from tagfind.pe import PEImage

    _, path, _ = windivert
    pe = pefile.PE(str(path), fast_load=True)
    pe.parse_data_directories(
        directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXCEPTION"]])
    by_begin = {e.struct.BeginAddress: e for e in pe.DIRECTORY_ENTRY_EXCEPTION}

    def handler(entry) -> bool:
        for _ in range(8):
            info = entry.unwindinfo
            if info.Flags & 3:
                return True
            chained = getattr(info, "FunctionEntry", None)  # pefile: the parent's BeginAddress
            if not info.Flags & 4 or chained is None:
                return False
            entry = by_begin.get(chained, entry)
        return True

    image = PEImage(path)
    expected = {begin: handler(e) for begin, e in by_begin.items()}
    got = {begin: image.has_exception_handler(begin) for begin in by_begin}
    assert got == expected
    assert any(expected.values()) and not all(expected.values())
