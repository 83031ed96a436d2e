"""Property tests of the readers through the command line (issue 15): > 2000 generated inputs.

Each example is a damaged or hostile capture (bytes of its TIFF structure, or its JSON metadata and
frames), station file, lens specification or result document, handed to ``metrology inspect`` or
``metrology zernike-export`` in this process. The property: no traceback and no exit code other
than the documented ones; a refused input ends in one line on stderr naming the file; nothing is
written. ``inspect`` is given a file that is not an audit store, opened after every input is read
and checked, so an input that survives the mutation also ends in exit 2 there, before any fit.

Hypothesis runs derandomized (the same examples in every run, no example database).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import struct

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metrology.cli import main
from metrology.commands.zernike_export import notes_path
from metrology.io.capture import read_capture
from tests.report_example import example_document
from tests.sim_cases import FIXTURES, bench_station, centre_leds, lens_coefficients, simulate_to

SPEC = FIXTURES / "specs" / "plan-4x-010.toml"
DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4}
COUNTS: dict = {}


def fuzz_settings(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    capture, station, _ = simulate_to(folder / "case", bench_station(32), lens_coefficients(0.03, 1), seed=1,
                                      leds=centre_leds(3))
    (folder / "not-a-store.sqlite").write_text("this is not an audit store\n")
    doc_path = folder / "result.json"
    doc_path.write_text(json.dumps(example_document("PASS")))
    return {"folder": folder, "capture": capture, "station": station, "store": folder / "not-a-store.sqlite",
            "capture_bytes": capture.read_bytes(), "station_text": station.read_text(), "spec_text": SPEC.read_text(),
            "document": example_document("PASS")}


def run(args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def check_refused(code, err, path, out_dir=None):
    """The property: a documented exit code, never an internal error on bad input; a refused input
    gives one line on stderr naming the file; nothing written."""
    assert code in DOCUMENTED_EXIT_CODES and code != 4, (code, err)
    assert "Traceback" not in err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("metrology: error:"), err
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())


def inspect_with(base, tmp, capture=None, station=None, spec=None):
    out = tmp / "out"
    args = ["inspect", capture or base["capture"], "--station", station or base["station"], "--spec", spec or SPEC,
            "--out", out, "--audit-db", base["store"]]
    code, _, err = run(args)
    check_refused(code, err, None, out)
    assert code == 2, (code, err)  # the foreign store refuses whatever got through
    return err


# ------------------------------------------------------------------ values a hostile file may hold
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["", "\n", "LENS\nFAIL", "\x00", "\u202e", "a" * 5000, "../../etc/passwd", "NaN", "1e309"])
NUMBER = st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0, -1, 1, 2**31, 2**63, 10**21, 1e300, -1e-300, 5e-324])
JSON_VALUE = st.recursive(st.none() | st.booleans() | NUMBER | TEXT,
                          lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXT, kids, max_size=4),
                          max_leaves=12)


def toml_value():
    scalar = (st.integers(-2**70, 2**70).map(str)
              | st.floats().map(lambda x: "nan" if math.isnan(x) else "inf" if x == math.inf else "-inf" if x == -math.inf else repr(x))
              | st.sampled_from(["true", "false", "1e300", "1e309", "-0.0", "0x7fffffffffffffff", "1979-05-27T07:32:00Z",
                                 "'\\n'", '"a\\u0000b"', '"LENS\\nFAIL"', '"\\u202e"', "[" * 60 + "]" * 60, "{}",
                                 "[1, 2, 3]", "{ a = 1 }", '"' + "x" * 5000 + '"', ""])
              | TEXT.map(json.dumps))
    return st.recursive(scalar, lambda kids: st.lists(kids, max_size=3).map(lambda v: "[" + ", ".join(v) + "]"),
                        max_leaves=6)


@st.composite
def mutated_toml(draw, text: str):
    """``text`` with a few lines changed: a value replaced, a line dropped, duplicated or inserted,
    or a few characters flipped."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["value", "value", "value", "drop", "dup", "insert", "chars"]))
        line = lines[i]
        if op == "value" and "=" in line and not line.lstrip().startswith("#"):
            lines[i] = line.split("=", 1)[0] + "= " + draw(toml_value())
        elif op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, line)
        elif op == "insert":
            key = draw(st.sampled_from(["rows", "upsampling", "zernike_terms", "x", "[extra]", "[[limits.mtf]]",
                                        '"1000000000000000000000"', "format_version"]))
            lines.insert(i, key if key.startswith("[") else f"{key} = {draw(toml_value())}")
        elif line:
            j = draw(st.integers(0, len(line) - 1))
            lines[i] = line[:j] + draw(st.sampled_from(["=", "[", "]", '"', "\\", "\x00", "\n", "#", "9" * 30])) + line[j + 1:]
        if not lines:
            lines = [""]
    return "\n".join(lines)


# ------------------------------------------------------------------ capture: TIFF bytes
def structure_offsets(data: bytes) -> list:
    """Offsets of the TIFF header, every IFD entry's value field and the metadata: where a flipped
    byte changes the file's structure rather than a pixel."""
    offsets = list(range(0, 16))
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        for page in tf.pages:
            n = struct.unpack_from("<H", data, page.offset)[0]
            offsets += [page.offset + 2 + 12 * k + f for k in range(n) for f in (2, 4, 8, 9)]
            offsets += [page.offset + 2 + 12 * n + f for f in range(4)]  # the next-IFD offset
            for tag in page.tags.values():
                if tag.name == "ImageDescription":
                    offsets += list(range(tag.valueoffset, tag.valueoffset + tag.count, 7))
    return offsets


N_TIFF_BYTES = 700


def test_capture_tiff_bytes(base, tmp_path):
    data = base["capture_bytes"]
    hot = structure_offsets(data)
    path = tmp_path / "capture.tif"

    @fuzz_settings(N_TIFF_BYTES)
    @given(edits=st.lists(st.tuples(st.sampled_from(["set", "set", "add", "truncate", "insert", "zero"]),
                                    st.sampled_from(hot) | st.integers(0, len(data) - 1),
                                    st.integers(0, 255) | st.sampled_from([0xFF, 0x7F, 0x80])), min_size=1, max_size=4))
    def example(edits):
        buf = bytearray(data)
        for op, pos, value in edits:
            pos = min(pos, len(buf) - 1)
            if op == "set":
                buf[pos] = value
            elif op == "add":
                buf[pos] = (buf[pos] + value) % 256
            elif op == "truncate":
                del buf[max(pos, 1):]
            elif op == "insert":
                buf[pos:pos] = bytes([value]) * (1 + value % 8)
            else:
                buf[pos:pos + 4] = b"\x00\x00\x00\x00"
        path.write_bytes(bytes(buf))
        inspect_with(base, tmp_path, capture=path)
        COUNTS["tiff"] = COUNTS.get("tiff", 0) + 1

    example()
    assert COUNTS["tiff"] >= N_TIFF_BYTES


# ------------------------------------------------------------------ capture: metadata and frames
N_CAPTURE_META = 450
META_KEYS = ["format", "format_version", "station_id", "lens_serial", "lens_model", "reference_sample",
             "reference_seed", "wavelength_nm", "created_utc", "frames", "x"]
FRAME_KEYS = ["led_row", "led_col", "exposure_s", "x"]


def test_capture_metadata_and_frames(base, tmp_path):
    cap = read_capture(base["capture"])
    meta0, frames0 = cap.metadata(), cap.frames
    path = tmp_path / "capture.tif"

    @fuzz_settings(N_CAPTURE_META)
    @given(edits=st.lists(st.tuples(st.sampled_from(META_KEYS), st.booleans(), JSON_VALUE), max_size=3),
           frame_edits=st.lists(st.tuples(st.integers(0, len(frames0) + 1), st.sampled_from(FRAME_KEYS), JSON_VALUE),
                                max_size=3),
           pixels=st.sampled_from(["same", "float-nan", "float-inf", "negative", "zero", "one-hot", "shape", "dtype",
                                   "extra-page", "3d"]))
    def example(edits, frame_edits, pixels):
        meta = json.loads(json.dumps(meta0))
        for key, delete, value in edits:
            if delete:
                meta.pop(key, None)
            else:
                meta[key] = value
        for j, key, value in frame_edits:
            if isinstance(meta.get("frames"), list) and j < len(meta["frames"]) and isinstance(meta["frames"][j], dict):
                meta["frames"][j][key] = value
            elif isinstance(meta.get("frames"), list):
                meta["frames"].append({key: value})
        frames = {
            "same": frames0, "zero": np.zeros_like(frames0), "one-hot": np.eye(frames0.shape[1], dtype=frames0.dtype)[None].repeat(len(frames0), 0),
            "float-nan": np.where(np.arange(frames0.size).reshape(frames0.shape) == 7, np.nan, frames0).astype(np.float32),
            "float-inf": np.where(np.arange(frames0.size).reshape(frames0.shape) == 3, np.inf, frames0).astype(np.float32),
            "negative": frames0.astype(np.float32) - 5000, "shape": frames0[:, :, :-2], "dtype": frames0.astype(np.int64),
            "extra-page": np.concatenate([frames0, frames0[:1]]), "3d": frames0[..., None].repeat(3, -1),
        }[pixels]
        try:
            description = json.dumps(meta, allow_nan=True)
        except (TypeError, ValueError, RecursionError):
            return
        tifffile.imwrite(path, frames, description=description, metadata=None)
        inspect_with(base, tmp_path, capture=path)
        COUNTS["meta"] = COUNTS.get("meta", 0) + 1

    example()
    assert COUNTS["meta"] >= 0.9 * N_CAPTURE_META


# ------------------------------------------------------------------ station and spec files
N_STATION, N_SPEC = 400, 300


@pytest.mark.parametrize("role, n", [("station", N_STATION), ("spec", N_SPEC)])
def test_station_and_spec_files(base, tmp_path, role, n):
    text = base[f"{role}_text"]
    path = tmp_path / f"{role}.toml"

    @fuzz_settings(n)
    @given(mutated=mutated_toml(text))
    def example(mutated):
        path.write_text(mutated, encoding="utf-8", errors="surrogatepass")
        inspect_with(base, tmp_path, **{role: path})
        COUNTS[role] = COUNTS.get(role, 0) + 1

    example()
    assert COUNTS[role] >= n


# ------------------------------------------------------------------ result documents (zernike-export)
N_RESULT = 400


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:3]):
            yield from _paths(v, prefix + (i,))


def test_result_documents(base, tmp_path):
    doc0 = base["document"]
    paths = [p for p in _paths(doc0) if p]
    path = tmp_path / "result.json"
    out = tmp_path / "export.txt"

    @fuzz_settings(N_RESULT)
    @given(edits=st.lists(st.tuples(st.sampled_from(paths), st.sampled_from(["set", "set", "delete"]), JSON_VALUE),
                          min_size=1, max_size=3),
           fmt=st.sampled_from(["csv", "opticstudio-fringe", "opticstudio-standard"]),
           raw=st.sampled_from([None, None, None, None, b"", b"\xff\xfe", b"[" * 100000, b'{"a": 1e999}', b"null"]))
    def example(edits, fmt, raw):
        doc = json.loads(json.dumps(doc0))
        for where, op, value in edits:
            node = doc
            try:
                for k in where[:-1]:
                    node = node[k]
                if op == "delete":
                    del node[where[-1]]
                else:
                    node[where[-1]] = value
            except (KeyError, IndexError, TypeError):
                pass
        try:
            data = raw if raw is not None else json.dumps(doc, allow_nan=True).encode()
        except (TypeError, ValueError, RecursionError):
            return
        path.write_bytes(data)
        out.unlink(missing_ok=True)
        radius = ["--norm-radius-mm", "1.5"] if fmt.startswith("opticstudio") else []
        code, stdout, err = run(["zernike-export", path, "--format", fmt, "--out", out, *radius])
        check_refused(code, err, path)
        assert code in (0, 2)
        if code == 2:
            assert not out.exists()
        else:  # every line a comment or a row of coefficients: no text from the file starts a line
            assert_rows(out.read_text(), fmt)
            if fmt != "csv":  # the notes beside the DAT: comments only
                notes = notes_path(out).read_text().splitlines()
                assert all(line.startswith("#") for line in notes), [ln for ln in notes if not ln.startswith("#")]
        COUNTS["result"] = COUNTS.get("result", 0) + 1

    example()
    assert COUNTS["result"] >= 0.9 * N_RESULT


def assert_rows(text: str, fmt: str) -> None:
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    if fmt == "csv":  # numbers, but for the name, the status, the largest budget source; alignment rows empty
        header = lines.pop(0).split(",")
        assert header[0] == "noll"
        text_columns = {"name", "status", "largest_source"}
        for fields in csv.reader(lines):
            line = ",".join(fields)
            assert len(fields) == len(header) and fields[0].isdigit(), line
            status = fields[header.index("status")]
            assert status in ("measured", "alignment"), line
            numbers = [fields[i] for i in range(len(header)) if header[i] not in text_columns]
            assert all(_is_number(x) or (status == "alignment" and x == "") for x in numbers[:5]), line
            assert all(_is_number(x) or x == "" for x in numbers[5:]), line
    else:  # the OpticStudio DAT: N, the radius, then N coefficients, one number per line
        assert all(_is_number(line) for line in lines), lines
        assert lines[0].isdigit() and len(lines) == int(lines[0]) + 2, lines[:3]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_the_suite_ran_at_least_2000_inputs():
    """(Runs last in this module: the counts of the tests above.)"""
    if len(COUNTS) < 5:
        pytest.skip("run with the whole module")
    assert sum(COUNTS.values()) >= 2000, COUNTS
