"""Which clips share source audio, found from their log-mels alone: the recordings that `folds.group_by: audio` keeps
in one fold where the dataset does not name them.

Spectral-peak landmarks with an inverted index (Wang 2003, the Shazam fingerprint; dpwe/audfprint's layout), on the
feature cache's log-mels, so nothing is decoded again:

1. Peaks: local maxima of each clip's log-mel (PEAK_FRAMES x PEAK_BANDS neighbourhood) within DYNAMIC_DB of the
   clip's loudest bin, the strongest PEAKS_PER_S per second. Level changes move no peak; other sounds mixed over a
   recording replace some peaks, not all.
2. Landmarks: each peak paired with its next FANOUT peaks within DT_MAX frames and a quarter of the bands: the hash
   (band, band difference, frame difference) and the anchor's frame.
3. Matches: the index sorted by hash (hashes held by more than BUCKET_CAP landmarks are stop words, left out);
   every landmark meets those of other clips with its hash, and a pair of clips at one time offset (+-1 frame)
   with at least `folds.audio.min_match` such meetings shares a stretch of audio: a *segment*. Other excerpts,
   offsets, levels, lengths and repetitions of one recording all give segments.
4. Recordings: segments that hold SHARED_LANDMARKS or more of the same landmark occurrences are stretches of one
   recording. Joining segments, not whole clips, keeps a multi-label clip from chaining its two recordings into
   one group.
5. Labels (curated clips): only segments whose two clips share a label count (a stretch heard under clips with no
   label in common is a background or an ambience bed), and a recording whose clips share its most common label
   less often than `folds.audio.purity` is dropped as a background. A recording that holds more than
   `folds.audio.max_class_share` of a class's clips says that the class comes from one source (the demo set renders
   each instrument from one soundfont sample): grouped folds would leave it out of training, so one line says so
   and the folds are label-stratified instead.

Each curated clip gets the set of recordings found in it (`folds` deals recordings, as it does the `sources`
column). The same index, queried with the noisy and test clips, tells which of them share a stretch with curated
clips, and how loud that stretch is in both (segment_levels: an event is loud, an ambience bed quiet). Time and
memory grow with the number of landmarks (about linear in hours of audio: no all-pairs comparison of clips; each
landmark meets at most BUCKET_CAP others, and long queries go in chunks). Measured on data/real
(bench/audio_groups.py, docs/benchmarks.md): pair precision 0.97, recall 0.60 against its sources column; the
misses are mostly other cuts of one take, which share no audio, and excerpts whose offset is no whole number of
frames lose part of their landmarks. The result is cached under the feature cache by the splits' keys and the
parameters (audio_groups-<key>.npz), so a rerun costs nothing.

    found = find(folder, min_match, frames_per_s)    # Found: segments, their edges, cross-split stretches
    groups, info = clip_groups(found, y, min_purity=0.6, max_class_share=0.5)   # each clip's recordings, statistics
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from pipeline.utils import atomic_path, progress

VERSION = 2  # bump when the landmarks, matching or the cached layout change
PEAK_FRAMES, PEAK_BANDS = 9, 5  # local-maximum neighbourhood (frames x mel bands)
DYNAMIC_DB = 40.0  # peaks within this of the clip's loudest bin
PEAKS_PER_S = 24
FANOUT, DT_MAX = 6, 48  # landmark pairs: next peaks within 48 frames (0.75 s at 64 frames/s)
BUCKET_CAP = 64  # a hash held by more landmarks is a stop word
CHUNK_LANDMARKS = 1_000_000  # query landmarks matched at a time (bounds memory on long splits)
SHARED_LANDMARKS = 3  # two segments holding this many of the same landmark occurrences are one recording
MIN_CLASS_CLIPS = 5  # a class this small may come from one recording without saying anything of the dataset
OTHER_SPLITS = ("noisy", "test")


# --------------------------------------------------------------------------- landmarks
def peaks(S: np.ndarray, frames_per_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames, bands, level in dB below the clip's loudest bin) of a clip's spectral peaks, in time order;
    S: (T, M) log-mel in dB."""
    S = np.asarray(S, np.float32)
    if S.shape[0] < 2:
        return np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32)
    top = ndimage.maximum_filter(S, size=(PEAK_FRAMES, PEAK_BANDS), mode="constant", cval=-np.inf)
    t, f = np.nonzero((S == top) & (S > S.max() - DYNAMIC_DB))
    keep = max(1, int(round(PEAKS_PER_S * S.shape[0] / frames_per_s)))
    if len(t) > keep:
        best = np.argpartition(-S[t, f], keep - 1)[:keep]
        t, f = t[best], f[best]
    order = np.lexsort((f, t))
    t, f = t[order], f[order]
    return t.astype(np.int32), f.astype(np.int32), (S.max() - S[t, f]).astype(np.float32)


def landmarks(t: np.ndarray, f: np.ndarray, below: np.ndarray, n_bands: int):
    """(hash, anchor frame, dB below the clip's loudest bin of the quieter peak) of each peak paired with its next
    FANOUT peaks (time order) within DT_MAX frames and n_bands // 4 bands. The hash packs (anchor band, band
    difference, frame difference)."""
    df_max = max(n_bands // 4, 1)
    hs, ts, bs = [], [], []
    for k in range(1, FANOUT + 1):
        dt, df = t[k:] - t[:-k], f[k:] - f[:-k]
        ok = (dt > 0) & (dt <= DT_MAX) & (np.abs(df) <= df_max)
        a = np.flatnonzero(ok)
        hs.append((f[a].astype(np.int64) * (2 * df_max + 1) + df[a] + df_max) * (DT_MAX + 1) + dt[a])
        ts.append(t[a])
        bs.append(np.maximum(below[a], below[a + k]))
    return np.concatenate(hs).astype(np.int64), np.concatenate(ts).astype(np.int32), np.concatenate(bs)


@dataclass
class Index:
    """Landmarks of a split's clips sorted by hash: hash, clip (position in the split), frame, and how far below
    its clip's loudest bin it lies (dB)."""

    hash: np.ndarray
    clip: np.ndarray
    frame: np.ndarray
    below: np.ndarray
    n_clips: int

    @classmethod
    def build(cls, clips, n_bands: int, frames_per_s: float, show=True, desc="landmarks"):
        """clips: iterable of (T, M) log-mel arrays (dB), in the split's order."""
        hs, cs, ts, bs, n = [], [], [], [], 0
        for i, S in enumerate(progress(clips, enabled=show, desc=desc, unit="clip")):
            h, t, b = landmarks(*peaks(S, frames_per_s), n_bands)
            hs.append(h)
            ts.append(t)
            bs.append(b)
            cs.append(np.full(len(h), i, np.int32))
            n = i + 1
        h = np.concatenate(hs) if hs else np.zeros(0, np.int64)
        order = np.argsort(h, kind="stable")  # within a hash: clip order, then time
        clip = np.concatenate(cs)[order] if cs else np.zeros(0, np.int32)
        frame = np.concatenate(ts)[order] if ts else np.zeros(0, np.int32)
        below = np.concatenate(bs)[order] if bs else np.zeros(0, np.float32)
        return cls(h[order], clip, frame, below, n)

    def without_stop_words(self) -> Index:
        """The landmarks whose hash at most BUCKET_CAP landmarks hold."""
        _, inv, counts = np.unique(self.hash, return_inverse=True, return_counts=True)
        keep = counts[inv] <= BUCKET_CAP
        return Index(self.hash[keep], self.clip[keep], self.frame[keep], self.below[keep], self.n_clips)


# --------------------------------------------------------------------------- matching
def _meetings(query: Index, index: Index, same: bool, rows: np.ndarray):
    """Yield (query landmark, index landmark) position pairs of equal hash, for the query landmarks at `rows`, a
    chunk per rank within the bucket. same: query is index (a self-join): each pair of clips once (query clip <
    index clip)."""
    lo = np.searchsorted(index.hash, query.hash[rows], "left")
    hi = np.searchsorted(index.hash, query.hash[rows], "right")
    for s in range(BUCKET_CAP):
        live = lo + s < hi
        if not live.any():
            return
        qi, ii = rows[live], (lo + s)[live]
        ok = query.clip[qi] < index.clip[ii] if same else np.ones(len(qi), bool)
        yield qi[ok], ii[ok]


def _keys(query: Index, index: Index, qi, ii, width: int) -> np.ndarray:
    """(clip pair, time offset) of each meeting as one int64: (qclip * n + iclip) * width + offset + width // 2."""
    off = query.frame[qi].astype(np.int64) - index.frame[ii] + width // 2
    return (query.clip[qi].astype(np.int64) * index.n_clips + index.clip[ii]) * width + off


def _segments(keys: np.ndarray, counts: np.ndarray, width: int, min_match: int):
    """The strong (clip pair, offset) keys and their segment ids: offsets of a pair whose meetings, counted with
    the offsets +-1 beside them, reach min_match; offsets of one pair within 2 frames of each other are one segment."""
    near = counts.copy()
    for d in (-1, 1):
        pos = np.searchsorted(keys, keys + d)
        hit = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == keys + d)
        near[hit] += counts[pos[hit]]
    strong = keys[near >= min_match]
    new = np.ones(len(strong), bool)
    if len(strong) > 1:
        same_pair = strong[1:] // width == strong[:-1] // width
        new[1:] = ~(same_pair & (strong[1:] - strong[:-1] <= 2))
    return strong, np.cumsum(new) - 1


def match(query: Index, index: Index, min_match: int, width: int, same: bool, show=True):
    """Segments between query clips and index clips. Returns (pairs (S, 2) of clip positions, and for every meeting
    in a segment: its segment, query landmark, index landmark). The query's clips go in chunks of about
    CHUNK_LANDMARKS landmarks (a clip pair lies in one chunk), so memory is bounded whatever the query's length."""
    per_clip = np.bincount(query.clip, minlength=query.n_clips)
    bounds = np.searchsorted(np.cumsum(per_clip), np.arange(CHUNK_LANDMARKS, per_clip.sum(), CHUNK_LANDMARKS))
    edges = np.unique(np.r_[0, bounds + 1, query.n_clips])
    all_pairs, all_links, n_seg = [], [], 0
    for c0, c1 in progress(list(zip(edges[:-1], edges[1:])), enabled=show and len(edges) > 2, desc="matching"):
        rows = np.flatnonzero((query.clip >= c0) & (query.clip < c1))
        pairs, links = _match_rows(query, index, min_match, width, same, rows)
        links[0] += n_seg
        n_seg += len(pairs)
        all_pairs.append(pairs)
        all_links.append(links)
    if not all_pairs:
        return np.zeros((0, 2), np.int64), np.zeros((3, 0), np.int64)
    return np.concatenate(all_pairs), np.concatenate(all_links, 1)


def _match_rows(query: Index, index: Index, min_match: int, width: int, same: bool, rows: np.ndarray):
    """match() for the query landmarks at `rows`."""
    keys, counts = [], []
    for qi, ii in _meetings(query, index, same, rows):
        k, c = np.unique(_keys(query, index, qi, ii, width), return_counts=True)
        keys.append(k)
        counts.append(c)
    if not keys:
        return np.zeros((0, 2), np.int64), np.zeros((3, 0), np.int64)
    keys, inv = np.unique(np.concatenate(keys), return_inverse=True)
    counts = np.bincount(inv, weights=np.concatenate(counts)).astype(np.int64)
    strong, seg = _segments(keys, counts, width, min_match)
    first = np.r_[0, np.flatnonzero(np.diff(seg)) + 1] if len(seg) else np.zeros(0, int)
    pair = strong[first] // width
    pairs = np.stack([pair // index.n_clips, pair % index.n_clips], 1) if len(seg) else np.zeros((0, 2), np.int64)
    # which segment each strong key and its +-1 neighbours belong to, then every meeting at those keys
    near = np.concatenate([strong - 1, strong, strong + 1])
    near_seg = np.tile(seg, 3)
    near, at = np.unique(near, return_index=True)
    near_seg = near_seg[at]
    links = [np.zeros((3, 0), np.int64)]
    for qi, ii in _meetings(query, index, same, rows):
        k = _keys(query, index, qi, ii, width)
        pos = np.minimum(np.searchsorted(near, k), max(len(near) - 1, 0))
        hit = near[pos] == k if len(near) else np.zeros(len(k), bool)
        links.append(np.stack([near_seg[pos[hit]], qi[hit], ii[hit]]))
    return pairs, np.concatenate(links, 1).astype(np.int64)


def segment_edges(n_segments: int, links: np.ndarray, n_landmarks: int) -> np.ndarray:
    """(E, 2) pairs of segments that hold SHARED_LANDMARKS or more of the same landmark occurrences: stretches of
    one recording heard in several clips. links: (3, L) rows
    segment, query landmark, index landmark (one index: a self-join's two sides share positions)."""
    if n_segments == 0:
        return np.zeros((0, 2), np.int64)
    seg = np.concatenate([links[0], links[0]])
    lm = np.concatenate([links[1], links[2]])
    B = sparse.csr_matrix((np.ones(len(seg)), (seg, lm)), shape=(n_segments, n_landmarks))
    B.data[:] = 1.0  # one per (segment, landmark), however often it met
    shared = sparse.triu(B @ B.T, k=1).tocoo()
    keep = shared.data >= SHARED_LANDMARKS
    return np.stack([shared.row[keep], shared.col[keep]], 1).astype(np.int64)


def segment_levels(links: np.ndarray, query: Index, index: Index, n_segments: int) -> np.ndarray:
    """(S,) median over each segment's meetings of how far below its clip's loudest bin the quieter landmark lies
    (dB): a foreground event's stretch is loud in both clips, a background bed's quiet."""
    if n_segments == 0:
        return np.zeros(0, np.float32)
    level = np.maximum(query.below[links[1]], index.below[links[2]])
    order = np.lexsort((level, links[0]))
    seg, level = links[0][order], level[order]
    start = np.searchsorted(seg, np.arange(n_segments), "left")
    stop = np.searchsorted(seg, np.arange(n_segments), "right")
    lo, hi = start + (stop - start - 1) // 2, start + (stop - start) // 2
    return ((level[lo] + level[hi]) / 2).astype(np.float32)


def cross_segments(query: Index, index: Index, min_match: int, width: int):
    """((Q, 2) rows: query clip, curated clip, of each stretch they share; (Q,) its level, segment_levels)."""
    pairs, links = match(query, index, min_match, width, same=False, show=False)
    if not len(pairs):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    return pairs.astype(np.int64), segment_levels(links, query, index, len(pairs))


# --------------------------------------------------------------------------- the split's recordings
@dataclass
class Found:
    """What the audio says, before any label is read: `pairs` (S, 2) the curated clips each segment (a stretch of
    audio two clips share) joins; `edges` (E, 2) the segments that are stretches of one recording; per other split
    `shared` (Q, 2): query clip, curated clip, and `shared_level` (Q,) how loud that stretch is."""

    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    edges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    shared: dict = field(default_factory=dict)
    shared_level: dict = field(default_factory=dict)  # split -> (Q,) levels of its shared stretches
    stats: dict = field(default_factory=dict)

    def save(self, path):
        arrays = {"pairs": self.pairs, "edges": self.edges}
        arrays.update({f"shared_{k}": v for k, v in self.shared.items()})
        arrays.update({f"level_{k}": v for k, v in self.shared_level.items()})
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, stats=np.array(json.dumps(self.stats)), **arrays)

    @classmethod
    def load(cls, path) -> Found:
        with np.load(path, allow_pickle=False) as z:
            shared = {k[len("shared_") :]: z[k] for k in z.files if k.startswith("shared_")}
            levels = {k[len("level_") :]: z[k] for k in z.files if k.startswith("level_")}
            return cls(z["pairs"], z["edges"], shared, levels, json.loads(str(z["stats"])))


def curated_segments(index: Index, min_match: int, width: int, show=True):
    """(segment pairs, segment edges) of the curated index's self-join."""
    pairs, links = match(index, index, min_match, width, same=True, show=show)
    return pairs, segment_edges(len(pairs), links, len(index.hash))


# --------------------------------------------------------------------------- the pass over the cache, cached
def _cache_key(meta_keys: dict, min_match: int) -> str:
    params = dict(
        version=VERSION,
        peak=(PEAK_FRAMES, PEAK_BANDS, DYNAMIC_DB, PEAKS_PER_S),
        pairs=(FANOUT, DT_MAX, BUCKET_CAP, SHARED_LANDMARKS),
        min_match=min_match,
        splits=meta_keys,
    )
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _raw_clips(cache):
    """A split's clips as (T, M) dB arrays, straight from the memory-mapped cache (not normalised)."""
    for i in range(len(cache)):
        off, n = int(cache.offsets[i]), int(cache.frames[i])
        yield cache.arr[off : off + n]


def find(folder, min_match: int, frames_per_s: float, show=True, log=None, others=OTHER_SPLITS) -> Found:
    """The curated split's segments and the `others` splits' shared stretches, from the feature cache in `folder`
    (pipeline.cache's layout); cached there as audio_groups-<key>.npz (the splits' cache keys and the parameters)."""
    from pipeline.cache import FeatureCache, read_meta

    splits = ["curated"] + [s for s in others if (folder / f"{s}.json").exists()]
    metas = {s: read_meta(folder / f"{s}.json") for s in splits}
    path = folder / f"audio_groups-{_cache_key({s: m.get('key') for s, m in metas.items()}, min_match)}.npz"
    if path.exists():
        try:
            found = Found.load(path)
            if log:
                log.info(f"audio groups: read {path.name} (cached)")
            return found
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            if log:
                log.info(f"audio groups: {path.name} is unreadable; finding the groups again")
    t0 = time.perf_counter()
    cur = FeatureCache(folder, "curated")
    n_bands = int(metas["curated"]["shape"][1])
    width = 2 * int(max(cur.frames.max(), 1)) + 3
    index = Index.build(_raw_clips(cur), n_bands, frames_per_s, show, "audio groups: curated").without_stop_words()
    pairs, edges = curated_segments(index, min_match, width, show)
    stats = dict(
        curated_s=round(time.perf_counter() - t0, 2),
        landmarks=int(len(index.hash)),
        hours=round(float(cur.frames.sum()) / frames_per_s / 3600, 3),
        segments=int(len(pairs)),
    )
    shared, shared_level = {}, {}
    for s in splits[1:]:
        t1 = time.perf_counter()
        other = FeatureCache(folder, s)
        w = 2 * int(max(cur.frames.max(), other.frames.max(), 1)) + 3
        q = Index.build(_raw_clips(other), n_bands, frames_per_s, show, f"audio groups: {s}")
        shared[s], shared_level[s] = cross_segments(q, index, min_match, w)
        stats[f"{s}_s"] = round(time.perf_counter() - t1, 2)
        stats[f"{s}_hours"] = round(float(other.frames.sum()) / frames_per_s / 3600, 3)
    found = Found(pairs, edges, shared, shared_level, stats)
    found.save(path)
    return found


# --------------------------------------------------------------------------- labels: backgrounds, whole classes
def purity(members: list, y: np.ndarray) -> tuple[float, int]:
    """(share of a recording's clips that carry its most common label, that label)."""
    counts = y[members].sum(axis=0)
    c = int(np.argmax(counts))
    return float(counts[c]) / len(members), c


def recordings(found: Found, y: np.ndarray) -> tuple[list, np.ndarray]:
    """(recordings as sorted lists of curated clip positions, (S,) recording of each segment or -1).

    Only segments whose two clips share a label count (a stretch shared across labels is a background or an
    ambience bed); segments joined by an edge are one recording. (Requiring the stretch to be loud as well,
    segment_levels, lifted pair precision on data/real from 0.968 to 0.998 but cut recall from 0.60 to 0.48:
    docs/benchmarks.md.)"""
    y = np.asarray(y) > 0
    S = len(found.pairs)
    if S == 0:
        return [], np.zeros(0, np.int64)
    ok = (y[found.pairs[:, 0]] & y[found.pairs[:, 1]]).any(axis=1)
    e = found.edges[ok[found.edges[:, 0]] & ok[found.edges[:, 1]]] if len(found.edges) else found.edges
    graph = sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(S, S))
    comp = connected_components(graph, directed=False)[1]
    comp = np.where(ok, comp, -1)
    ids, seg_rec = np.unique(comp, return_inverse=True)
    seg_rec = seg_rec - (1 if ids[0] == -1 else 0)
    seg_rec[comp == -1] = -1
    members = [set() for _ in range(int(seg_rec.max()) + 1)]
    for (a, b), r in zip(found.pairs.tolist(), seg_rec.tolist()):
        if r >= 0:
            members[r].update((a, b))
    return [sorted(m) for m in members], seg_rec


def clip_groups(found: Found, y, min_purity: float, max_class_share: float, classes=None):
    """(each curated clip's recordings, names "a<k>", a clip with none its own group "clip:<i>"; what was decided).

    y: (N, C) multi-hot curated labels. A recording whose clips share a label less often than min_purity is a
    background (dropped). A recording that holds more than max_class_share of the clips of a class (of at least
    MIN_CLASS_CLIPS) says the class comes from one source: info["fallback"] is then True, and the folds are dealt
    label-stratified, since grouped folds would leave that class out of training."""
    y = np.asarray(y) > 0
    per_class = y.sum(axis=0)
    found_recs, _ = recordings(found, y)
    kept, background, whole = [], 0, set()
    for members in found_recs:
        p, c = purity(members, y)
        if p < min_purity:
            background += 1
            continue
        if per_class[c] >= MIN_CLASS_CLIPS and y[members, c].sum() > max_class_share * per_class[c]:
            whole.add(c)
        kept.append(members)
    groups = [[] for _ in range(len(y))]
    for k, members in enumerate(kept):
        for i in members:
            groups[i].append(f"a{k}")
    groups = [g or [f"clip:{i}"] for i, g in enumerate(groups)]
    info = dict(
        recordings=len(found_recs),
        kept=len(kept),
        background=background,
        whole_class=[classes[c] if classes is not None else str(c) for c in sorted(whole)],
        fallback=bool(whole),
        largest_share=round(max((len(m) for m in kept), default=1) / max(len(y), 1), 4),
        grouped_share=round(float(np.mean([not g[0].startswith("clip:") for g in groups])) if len(y) else 0.0, 4),
    )
    return groups, info
