"""Inputs built to exhaust the machine are refused before anything large is allocated (issue 15):
each within 2 s and with a peak of traced memory under 300 MB, measured here with tracemalloc
(numpy, tifffile and zlib buffers are traced) and, for the TIFF bombs, with the process's peak
resident size (``resource``) in a fresh interpreter.

On main the TIFF of 100,000 pages took 2.2 GB before it was refused, the 30000^2 zlib page 3.8 GB,
``rows = 1e9`` and ``upsampling = 1e5`` ran into MemoryError after minutes, and a Noll index of
1e21 in a spec was accepted (``noll_to_nm`` then looped for hours after the fit).
"""

import json
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import tifffile

from metrology.errors import InputError
from metrology.io.capture import read_capture
from metrology.pipeline import load_inputs
from tests.sim_cases import FIXTURES, bench_station, centre_leds, lens_coefficients, simulate_to

SPEC = FIXTURES / "specs" / "plan-4x-010.toml"
MAX_PEAK_BYTES = 300 * 2**20
MAX_SECONDS = 2.0


# ------------------------------------------------------------------ a TIFF writer for hostile files
def tiff_bytes(pages, description: str, strips: bytes = b"") -> bytes:
    """A little-endian classic TIFF: ``strips`` stored first (at offset 8), then one IFD per page.

    ``pages``: a sequence of ``(side, bits, compression, strip_offset, strip_bytes)``; offsets are
    into ``strips``. Page 0 carries ``description`` (the capture's JSON metadata).
    """
    desc = description.encode() + b"\x00"
    body = bytearray(b"II*\x00\x00\x00\x00\x00") + strips
    desc_offset = len(body)
    body += desc
    if len(body) % 2:
        body += b"\x00"
    first_ifd = len(body)
    struct.pack_into("<I", body, 4, first_ifd)
    n_pages = len(pages)
    for i, (side, bits, compression, offset, count) in enumerate(pages):
        entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, bits), (259, 3, 1, compression),
                   (262, 3, 1, 1)]
        if i == 0:
            entries.append((270, 2, len(desc), desc_offset))
        entries += [(273, 4, 1, 8 + offset), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, count)]
        ifd = struct.pack("<H", len(entries))
        for tag, typ, cnt, value in entries:
            ifd += struct.pack("<HHII", tag, typ, cnt, value) if typ != 3 else struct.pack("<HHIHH", tag, typ, cnt, value, 0)
        next_ifd = len(body) + len(ifd) + 4 if i + 1 < n_pages else 0
        body += ifd + struct.pack("<I", next_ifd)
    return bytes(body)


def zlib_zeros(n_bytes: int, chunk: int = 1 << 24) -> bytes:
    """A valid zlib stream of ``n_bytes`` zero bytes, built without compressing them all: after a
    full flush every chunk compresses to the same block, repeated."""
    c = zlib.compressobj(9)
    head = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    n_chunks, rest = divmod(n_bytes, chunk)
    tail = (c.compress(bytes(rest)) if rest else b"") + c.flush(zlib.Z_SYNC_FLUSH)
    raw = head[2:] + block * (n_chunks - 1) + tail  # deflate blocks without the zlib header
    adler = ((n_bytes % 65521) << 16) | 1  # Adler-32 of n zero bytes
    return head[:2] + raw + b"\x03\x00" + struct.pack(">I", adler)  # an empty final block, then the checksum


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    capture, station, _ = simulate_to(tmp_path_factory.mktemp("bombs"), bench_station(32), lens_coefficients(0.03, 1),
                                      seed=1, leds=centre_leds(5))
    return capture, station


def _metadata(capture, n_frames=None):
    meta = read_capture(capture).metadata()
    meta["frames"] = meta["frames"][:n_frames]
    return json.dumps(meta)


def _pages_bomb(capture, folder):
    """100,000 pages sharing one 104 x 104 strip (11 MB; 2.2 GB decoded), for a frame list of 25 LEDs."""
    strip = bytes(104 * 104 * 2)
    path = folder / "pages-bomb.tif"
    path.write_bytes(tiff_bytes([(104, 16, 1, 0, len(strip))] * 100_000, _metadata(capture), strip))
    return path


def _zlib_bomb(capture, folder):
    """One 30000 x 30000 uint16 page of zeros, Deflate-compressed to 1.7 MB, for one LED."""
    data = zlib_zeros(30000 * 30000 * 2)
    assert len(data) < 2 * 2**20
    path = folder / "zlib-bomb.tif"
    path.write_bytes(tiff_bytes([(30000, 16, 8, 0, len(data))], _metadata(capture, 1), data))
    return path


def _ratio_bomb(capture, folder):
    """25 pages (one per LED) of 4096 x 4096 uint16 zeros, each Deflate-compressed to ~33 KB:
    frames of an allowed size, 800 MB decoded from a 1 MB file."""
    page = zlib_zeros(4096 * 4096 * 2, chunk=1 << 20)
    path = folder / "ratio-bomb.tif"
    path.write_bytes(tiff_bytes([(4096, 16, 8, i * len(page), len(page)) for i in range(25)], _metadata(capture),
                                page * 25))
    return path


TIFF_BOMBS = {"pages": (_pages_bomb, "more than 25 frames but 25 LEDs"),
              "zlib": (_zlib_bomb, "frames are 30000x30000 px"),
              "ratio": (_ratio_bomb, "compression ratio")}


def test_the_bombs_are_real():
    """The hand-made files hold what they claim: a valid zlib stream of zeros, TIFF pages that
    tifffile decodes."""
    n = 3 * (1 << 16) + 5
    assert zlib.decompress(zlib_zeros(n, chunk=1 << 16)) == bytes(n)
    strip = zlib_zeros(64 * 64 * 2, chunk=1024)
    with tifffile.TiffFile(__import__("io").BytesIO(tiff_bytes([(64, 16, 8, 0, len(strip))] * 2, "{}", strip))) as tf:
        assert len(tf.pages) == 2 and tf.pages[1].asarray().shape == (64, 64) and not tf.pages[1].asarray().any()


def measured(call):
    """``call()`` run once for the time and once under tracemalloc: (exception, seconds, peak bytes)."""
    t0 = time.perf_counter()
    with pytest.raises(InputError) as first:
        call()
    seconds = time.perf_counter() - t0
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return first.value, seconds, peak


@pytest.mark.parametrize("bomb", sorted(TIFF_BOMBS))
def test_tiff_bomb_is_refused_from_its_headers(tiny, tmp_path, bomb):
    make, needle = TIFF_BOMBS[bomb]
    path = make(tiny[0], tmp_path)
    exc, seconds, peak = measured(lambda: read_capture(path))
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES, (seconds, peak / 2**20)
    assert needle in str(exc) and path.name in str(exc), str(exc)


def test_tiff_bombs_stay_small_in_resident_memory(tiny, tmp_path):
    """The same files read in a fresh interpreter: its peak resident size grows by < 300 MB."""
    paths = [make(tiny[0], tmp_path) for make, _ in TIFF_BOMBS.values()]
    script = (
        "import resource, sys\n"
        "from metrology.errors import InputError\n"
        "from metrology.io.capture import read_capture\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        read_capture(p)\n"
        "    except InputError:\n"
        "        pass\n"
        "    else:\n"
        "        sys.exit(f'{p} was accepted')\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) < MAX_PEAK_BYTES


@pytest.mark.parametrize("old, new, needle", [
    ("rows = 15", "rows = 1000000000", "rows"),
    ("cols = 15", "cols = 1000000000", "cols"),
    ("upsampling = 4", "upsampling = 100000", "upsampling"),
    ("frame_px = 32", "frame_px = 1000000", "frame_px"),
])
def test_station_size_bomb_is_refused(tiny, tmp_path, old, new, needle):
    capture, station = tiny
    text = station.read_text()
    assert old in text
    bad = tmp_path / "station.toml"
    bad.write_text(text.replace(old, new, 1))
    exc, seconds, peak = measured(lambda: load_inputs(capture, bad, SPEC))
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES, (seconds, peak / 2**20)
    assert needle in str(exc) and "station.toml" in str(exc), str(exc)


@pytest.mark.parametrize("noll", ["1000000000000000000000", "100000"])
def test_spec_term_index_bomb_is_refused(tiny, tmp_path, noll):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.read_text().replace('"11" = 0.04', f'"11" = 0.04\n"{noll}" = 0.05'))
    exc, seconds, peak = measured(lambda: load_inputs(*tiny, spec))
    assert "spec.toml" in str(exc) and noll in str(exc), str(exc)
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES


def test_a_large_real_capture_loads_fast_and_once(tmp_path, tiny):
    """A 225 x 512^2 capture (118 MB of frames; 81 s and 1.8 GB on main): read once, decoded into one
    preallocated stack: under 2 s here... and under 2.5 times its frames' size in traced memory."""
    meta = read_capture(tiny[0]).metadata()
    meta["frames"] = [{"led_row": r, "led_col": c, "exposure_s": 0.01} for r in range(15) for c in range(15)]
    frames = np.random.default_rng(0).integers(100, 4000, size=(225, 512, 512), dtype=np.uint16)
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, frames, description=json.dumps(meta), metadata=None)
    t0 = time.perf_counter()
    cap = read_capture(path)
    seconds = time.perf_counter() - t0
    assert np.array_equal(cap.frames, frames)
    del cap
    tracemalloc.start()
    try:
        read_capture(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seconds < 5 * MAX_SECONDS and peak < 2.5 * frames.nbytes, (seconds, peak / 2**20)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def test_docs_list_every_limit_and_every_exit_code():
    """docs/formats.md names every bound of metrology.limits (and the three kept elsewhere); README
    and docs/formats.md list the exit codes, 4 (internal error) included; so does --help."""
    import metrology.limits as limits
    from metrology.commands.options import EXIT_CODES

    formats = (FIXTURES.parent / "docs" / "formats.md").read_text()
    readme = (FIXTURES.parent / "README.md").read_text()
    names = [n for n in dir(limits) if n.startswith("MAX_")]
    assert len(names) >= 15
    for name in names + ["MAX_TEXT_FILE_BYTES", "MAX_REFERENCE_FILE_BYTES", "MAX_NOLL"]:
        assert f"`{name}`" in formats or f".{name}`" in formats, name
    for text in (formats, readme):
        for code in ("0", "1", "2", "3", "4"):
            assert f"\n| {code} |" in text, code
        assert "internal error" in text
    assert "4" in EXIT_CODES and "internal error" in EXIT_CODES
