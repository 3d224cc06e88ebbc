"""Joining block polygons across block borders (union-find over touching components of one class),
exactly, in block-row order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from geoseg.vector.blocks import BlockResult, Finished

if TYPE_CHECKING:
    pass


class _Groups:
    """Union-find over global component ids, with the members of each group."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.members: dict[int, list[int]] = {}

    def add(self, g: int) -> None:
        self.parent[g] = g
        self.members[g] = [g]

    def find(self, g: int) -> int:
        root = g
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[g] != root:
            self.parent[g], g = root, self.parent[g]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if len(self.members[ra]) < len(self.members[rb]):
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.members[ra].extend(self.members.pop(rb))


def _join_pairs(
    groups: _Groups, a: np.ndarray, b: np.ndarray, ca: np.ndarray, cb: np.ndarray, connectivity: int
) -> None:
    """Union components on two facing pixel lines (global ids ``a``/``b``, classes ``ca``/``cb``)."""
    offsets = (0,) if connectivity == 4 else (-1, 0, 1)
    n = len(a)
    for off in offsets:
        lo, hi = max(0, -off), min(n, n - off)
        x, y = a[lo:hi], b[lo + off : hi + off]
        cx, cy = ca[lo:hi], cb[lo + off : hi + off]
        keep = (x > 0) & (y > 0) & (cx == cy)
        if keep.any():
            for p, q in set(zip(x[keep].tolist(), y[keep].tolist())):
                groups.union(p, q)


@dataclass
class Polygon:
    """A finished region: class, geometry in pixel coordinates, pixel count, probability sum."""

    value: int
    geometry: Any
    pixels: int
    prob_sum: float | None


def merge_blocks(
    results: Iterator[list[BlockResult]], connectivity: int, n_rows: int
) -> Iterator[Polygon | Finished]:
    """Given block rows in order, yield each block's finished regions, and each region that
    crosses block borders once no later row can extend it."""
    import shapely

    groups = _Groups()
    info: dict[int, tuple[int, int, float | None, bytes]] = {}
    prev_bottom: np.ndarray | None = None
    prev_bottom_cls: np.ndarray | None = None
    next_id = 0  # global ids: a running count of components, unique and far from int64's end
    for r, row in enumerate(results):
        row = sorted(row, key=lambda b: b.block_col)
        tops, bottoms, tcls, bcls = [], [], [], []
        lefts_rights: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for b in row:
            if b.finished is not None:
                yield b.finished
            base = next_id
            next_id += len(b.classes)
            local_ids = np.arange(len(b.classes), dtype=np.int64)
            gid = np.where(local_ids > 0, local_ids + base, 0)
            for local, wkb in b.geoms.items():
                g = base + local
                groups.add(g)
                info[g] = (
                    int(b.classes[local]),
                    int(b.pixels[local]),
                    None if b.prob_sum is None else float(b.prob_sum[local]),
                    wkb,
                )
            tops.append(gid[b.top])
            bottoms.append(gid[b.bottom])
            tcls.append(b.classes[b.top])
            bcls.append(b.classes[b.bottom])
            lefts_rights.append((gid[b.left], gid[b.right], b.classes[b.left], b.classes[b.right]))
        for (_, right, _, rcls), (left, _, lcls, _) in zip(lefts_rights, lefts_rights[1:]):
            _join_pairs(groups, right, left, rcls, lcls, connectivity)
        top, top_cls = np.concatenate(tops), np.concatenate(tcls)
        if prev_bottom is not None and prev_bottom_cls is not None:
            _join_pairs(groups, prev_bottom, top, prev_bottom_cls, top_cls, connectivity)
        prev_bottom, prev_bottom_cls = np.concatenate(bottoms), np.concatenate(bcls)
        last = r == n_rows - 1
        open_roots = set() if last else {groups.find(int(g)) for g in np.unique(prev_bottom) if g}
        for root in [g for g in list(groups.members) if g not in open_roots]:
            members = groups.members.pop(root)
            parts = [info.pop(m) for m in members]
            for m in members:
                del groups.parent[m]
            geoms = shapely.from_wkb([p[3] for p in parts])
            geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
            if not geom.is_valid:  # 8-connected regions touching themselves at a corner
                geom = shapely.make_valid(geom)
            probs = [p[2] for p in parts]
            yield Polygon(
                parts[0][0],
                geom,
                sum(p[1] for p in parts),
                None if probs[0] is None else float(sum(probs)),  # type: ignore[arg-type]
            )
