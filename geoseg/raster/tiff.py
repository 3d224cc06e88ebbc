"""TIFF at the byte level: read a file's IFD tags, write a Cloud-Optimized GeoTIFF from tiles
that are compressed already.

GDAL compresses (on the workers, :mod:`geoseg.raster.blocks`); this module only moves bytes, so the
process that assembles a COG never decodes or encodes a pixel. The layout is the one GDAL's COG
driver writes (and ``rio cogeo validate`` checks): the header and GDAL's structural metadata,
every IFD (full resolution first, then the overviews), then the tiles, smallest overview first
and each level in row-major order, each tile with GDAL's 4-byte size leader and its last 4 bytes
repeated as a trailer, so GDAL reports ``LAYOUT=COG`` and trusts the layout when reading.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Sequence

# TIFF field types: code -> (struct letter, size)
_TYPES: dict[int, tuple[str, int]] = {
    1: ("B", 1),
    2: ("s", 1),
    3: ("H", 2),
    4: ("I", 4),
    5: ("II", 8),
    6: ("b", 1),
    7: ("B", 1),
    8: ("h", 2),
    9: ("i", 4),
    10: ("ii", 8),
    11: ("f", 4),
    12: ("d", 8),
    16: ("Q", 8),
    17: ("q", 8),
    18: ("Q", 8),
}
SHORT, LONG, LONG8 = 3, 4, 16
TILE_OFFSETS, TILE_BYTE_COUNTS = 324, 325
NEW_SUBFILE_TYPE = 254
IMAGE_WIDTH, IMAGE_LENGTH = 256, 257
#: Tags an overview IFD keeps from the full-resolution one (GDAL's COG driver writes these).
OVERVIEW_TAGS = frozenset({258, 259, 262, 277, 284, 317, 320, 322, 323, 338, 339, 42113})

#: GDAL's structural metadata of a COG (its "ghost area"), as its COG driver writes it.
GHOST = (
    "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nBLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\nKNOWN_INCOMPATIBLE_EDITION=NO\n "
)


@dataclass(frozen=True)
class Tag:
    """One IFD entry: its field type, value count and raw little-endian value bytes."""

    code: int
    type: int
    count: int
    data: bytes

    def values(self) -> tuple[int, ...]:
        letter, size = _TYPES[self.type]
        return struct.unpack(
            f"<{self.count * len(letter)}{letter[0]}", self.data[: self.count * size]
        )


def read_ifds(data: bytes) -> list[dict[int, Tag]]:
    """Every IFD of a little-endian TIFF or BigTIFF held in ``data``, as tag code -> :class:`Tag`."""
    if data[:2] != b"II":
        raise ValueError("not a little-endian TIFF")
    big = struct.unpack_from("<H", data, 2)[0] == 43
    offset = struct.unpack_from("<Q" if big else "<I", data, 8 if big else 4)[0]
    ifds: list[dict[int, Tag]] = []
    while offset:
        count = struct.unpack_from("<Q" if big else "<H", data, offset)[0]
        pos = offset + (8 if big else 2)
        tags: dict[int, Tag] = {}
        for _ in range(count):
            if big:
                code, typ, n = struct.unpack_from("<HHQ", data, pos)
                inline, value_pos = 8, pos + 12
            else:
                code, typ, n = struct.unpack_from("<HHI", data, pos)
                inline, value_pos = 4, pos + 8
            size = n * _TYPES[typ][1]
            if size > inline:
                value_pos = struct.unpack_from("<Q" if big else "<I", data, value_pos)[0]
            tags[code] = Tag(code, typ, n, bytes(data[value_pos : value_pos + size]))
            pos += 20 if big else 12
        ifds.append(tags)
        offset = struct.unpack_from("<Q" if big else "<I", data, pos)[0]
    return ifds


def tile_bytes(data: bytes, ifd: dict[int, Tag]) -> list[bytes]:
    """The compressed tiles of one IFD of ``data``, in the TIFF's order (row-major; band by band
    for a planar file)."""
    offsets = ifd[TILE_OFFSETS].values()
    counts = ifd[TILE_BYTE_COUNTS].values()
    return [bytes(data[o : o + n]) for o, n in zip(offsets, counts)]


def cog_data_size(tile_sizes: Sequence[Sequence[int]]) -> int:
    """Bytes of tile data with GDAL's leaders and trailers (8 bytes a tile)."""
    return sum(n + 8 for sizes in tile_sizes for n in sizes if n)


def write_cog(
    out: BinaryIO,
    tags: dict[int, Tag],
    tile_sizes: Sequence[Sequence[int]],
    tile: Callable[[int, int], bytes],
    bigtiff: bool | None = None,
) -> None:
    """Write a COG: full resolution with the IFD ``tags`` (tile offsets and counts left out),
    then ``len(tile_sizes) - 1`` overviews, each half the size of the one before (rounded up).
    The tiles of level ``i`` have the byte counts ``tile_sizes[i]`` (row-major; 0 for a tile
    never written) and ``tile(i, j)`` gives tile ``j``'s bytes; GDAL's leader and trailer are
    added here.

    BigTIFF when the file would pass 4 GiB (or ``bigtiff``), else classic TIFF (which every
    reader knows)."""
    width, height = tags[IMAGE_WIDTH].values()[0], tags[IMAGE_LENGTH].values()[0]
    data_bytes = cog_data_size(tile_sizes)
    big = (
        bigtiff
        if bigtiff is not None
        else (data_bytes + 1_000_000 + 64 * sum(len(t) for t in tile_sizes) > 2**32 - 1)
    )
    levels = range(len(tile_sizes))
    ghost = f"GDAL_STRUCTURAL_METADATA_SIZE={len(GHOST):06d} bytes\n{GHOST}".encode()
    header = 16 if big else 8
    entry, count_size, next_size = (20, 8, 8) if big else (12, 2, 4)
    inline = 8 if big else 4

    # each IFD's tags, with placeholder offsets of the right length
    ifd_tags: list[dict[int, Tag]] = []
    for i in levels:
        level_tags = {c: t for c, t in tags.items() if c not in (TILE_OFFSETS, TILE_BYTE_COUNTS)}
        if i > 0:
            level_tags = {c: t for c, t in level_tags.items() if c in OVERVIEW_TAGS}
            level_tags[NEW_SUBFILE_TYPE] = _long(NEW_SUBFILE_TYPE, 1)
            level_tags[IMAGE_WIDTH] = _long(IMAGE_WIDTH, -(-width // 2**i))
            level_tags[IMAGE_LENGTH] = _long(IMAGE_LENGTH, -(-height // 2**i))
        level_tags[TILE_OFFSETS] = _offsets_tag(TILE_OFFSETS, [0] * len(tile_sizes[i]), big)
        level_tags[TILE_BYTE_COUNTS] = _offsets_tag(TILE_BYTE_COUNTS, list(tile_sizes[i]), big)
        ifd_tags.append(dict(sorted(level_tags.items())))

    def ifd_size(tags: dict[int, Tag]) -> int:
        extra = sum(_pad(len(t.data)) for t in tags.values() if len(t.data) > inline)
        return count_size + entry * len(tags) + next_size + extra

    starts: list[int] = []
    pos = header + len(ghost)
    for tags in ifd_tags:
        pos += pos % 2
        starts.append(pos)
        pos += ifd_size(tags)
    data_start = pos
    # tile offsets: smallest overview first, each tile after its 4-byte leader
    offsets: list[list[int]] = [[] for _ in tile_sizes]
    pos = data_start
    for i in reversed(levels):
        for n in tile_sizes[i]:
            offsets[i].append(pos + 4 if n else 0)
            pos += n + 8 if n else 0
    for i, tags in enumerate(ifd_tags):
        tags[TILE_OFFSETS] = _offsets_tag(TILE_OFFSETS, offsets[i], big)

    buf = bytearray()
    buf += b"II" + (
        struct.pack("<HHHQ", 43, 8, 0, starts[0]) if big else struct.pack("<HI", 42, starts[0])
    )
    buf += ghost
    for i, tags in enumerate(ifd_tags):
        if len(buf) % 2:
            buf += b"\0"
        assert len(buf) == starts[i]
        nxt = starts[i + 1] if i + 1 < len(ifd_tags) else 0
        extra_pos = starts[i] + count_size + entry * len(tags) + next_size
        body = bytearray(struct.pack("<Q" if big else "<H", len(tags)))
        extra = bytearray()
        for t in tags.values():
            if len(t.data) > inline:
                value = struct.pack("<Q" if big else "<I", extra_pos + len(extra))
                extra += t.data + b"\0" * (_pad(len(t.data)) - len(t.data))
            else:
                value = t.data + b"\0" * (inline - len(t.data))
            body += struct.pack("<HHQ" if big else "<HHI", t.code, t.type, t.count) + value
        body += struct.pack("<Q" if big else "<I", nxt)
        buf += body + extra
    assert len(buf) == data_start
    out.write(buf)
    for i in reversed(levels):
        for j, n in enumerate(tile_sizes[i]):
            if not n:
                continue
            chunk = tile(i, j)
            if len(chunk) != n:
                raise ValueError(f"tile {j} of level {i}: {len(chunk)} bytes, expected {n}")
            out.write(struct.pack("<I", n))
            out.write(chunk)
            out.write(chunk[-4:].rjust(4, b"\0"))


def _pad(n: int) -> int:
    return n + n % 2


def _long(code: int, value: int) -> Tag:
    return Tag(code, LONG, 1, struct.pack("<I", value))


def _offsets_tag(code: int, values: Sequence[int], big: bool) -> Tag:
    typ = LONG8 if big else LONG
    letter = _TYPES[typ][0]
    return Tag(code, typ, len(values), struct.pack(f"<{len(values)}{letter}", *values))
