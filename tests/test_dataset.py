"""The on-disk format's group ids and the reference's epoch sampler (GroupSampler): every group
once per epoch under one augmentation with all its examples together, DDP shards by group,
exact mid-epoch resume, epoch_size; and the uniform fallback for datasets without groups."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from trm.data import sudoku
from trm.data.dataset import (DatasetError, DatasetWriter, GroupLayout, GroupSampler, PuzzleDataset, SampleStream,
                              epoch_size, make_stream, read_meta)

# group g has AUGS[g] puzzles (augmentations) of EXAMPLES[g] examples each, as ARC tasks do
AUGS = [3, 1, 4, 2, 5, 3, 2]
EXAMPLES = [2, 5, 1, 3, 4, 2, 1]


def _write(out: Path, groups: bool = True, shuffle_rows: bool = True) -> Path:
    """A dataset whose row i has inputs[i, 0] == i; rows of a puzzle scattered like ARC's
    (written pair by pair across augmentations), then optionally shuffled."""
    g, a = [], []
    for gi, (k, n) in enumerate(zip(AUGS, EXAMPLES)):
        for _ in range(n):
            g += [gi] * k
            a += list(range(k))
    g, a = np.array(g, np.int32), np.array(a, np.int32)
    if shuffle_rows:
        perm = np.random.default_rng(0).permutation(len(g))
        g, a = g[perm], a[perm]
    n = len(g)
    arrays = dict(inputs=np.arange(n, dtype=np.int32)[:, None].repeat(2, 1), labels=np.zeros((n, 2), np.int16),
                  puzzle_ids=(g * 10 + a).astype(np.int32))
    if groups:
        arrays.update(group_ids=g + 100, aug_ids=a)  # ids need not start at 0
    with DatasetWriter(out, {"name": "toy", "vocab_size": 4, "seq_len": 2, "num_puzzle_ids": 1}) as w:
        w.append("train", **arrays)
        w.append("test", **{k: v[:5] for k, v in arrays.items()})
    return out


@pytest.fixture
def toy(tmp_path) -> PuzzleDataset:
    return PuzzleDataset(_write(tmp_path / "toy"), "train")


def _runs(ds: PuzzleDataset, idx: np.ndarray) -> list[tuple[int, int, list[int]]]:
    """(group, augmentation, rows) for each maximal run of one puzzle in idx."""
    g, a = np.asarray(ds.arrays["group_ids"])[idx], np.asarray(ds.arrays["aug_ids"])[idx]
    out = []
    for i, row in enumerate(idx):
        if out and (out[-1][0], out[-1][1]) == (g[i], a[i]):
            out[-1][2].append(int(row))
        else:
            out.append((int(g[i]), int(a[i]), [int(row)]))
    return out


def test_meta_records_group_stats(toy) -> None:
    meta = toy.meta
    s = meta["groups"]["train"]
    assert s["total_groups"] == len(AUGS) and s["total_puzzles"] == sum(AUGS)
    assert s["mean_puzzle_examples"] == pytest.approx(len(toy) / sum(AUGS))
    assert s["epoch_samples"] == pytest.approx(sum(EXAMPLES))  # one puzzle per group, all its examples
    assert epoch_size(toy.path) == epoch_size(meta) == pytest.approx(sum(EXAMPLES))
    assert meta["groups"]["test"]["total_puzzles"] <= 5
    layout = GroupLayout.from_dataset(toy)
    assert (layout.num_groups, layout.num_puzzles) == (len(AUGS), sum(AUGS))


def test_every_group_once_per_epoch_one_augmentation_all_examples(toy) -> None:
    s = make_stream(toy, seed=3)
    assert isinstance(s, GroupSampler) and s.epoch_samples == pytest.approx(sum(EXAMPLES))
    g_all, a_all = np.asarray(toy.arrays["group_ids"]), np.asarray(toy.arrays["aug_ids"])
    orders, chosen = [], []
    for epoch in range(6):
        idx = s.take(sum(EXAMPLES))  # one epoch exactly: every puzzle of a group is the same size
        assert s.state_dict() == {"sampler": "groups", "epoch": epoch + 1, "pos": 0}
        runs = _runs(toy, idx)
        assert sorted(r[0] for r in runs) == [100 + g for g in range(len(AUGS))]  # each group once, contiguous
        for g, a, rows in runs:
            want = np.flatnonzero((g_all == g) & (a_all == a))
            assert sorted(rows) == want.tolist()  # all examples of the chosen augmentation, nothing else
        orders.append([r[0] for r in runs])
        chosen.append([r[1] for r in runs])
    assert len({tuple(o) for o in orders}) > 1  # the order changes with the epoch
    picked = {(o, c) for oo, cc in zip(orders, chosen) for o, c in zip(oo, cc)}
    assert len({c for g, c in picked if g == 104}) > 1  # so does the augmentation drawn
    again = make_stream(toy, seed=3)
    assert np.array_equal(again.take(6 * sum(EXAMPLES)),
                          np.concatenate([GroupSampler(GroupLayout.from_dataset(toy), 3, epoch=e)._order
                                          for e in range(6)]))
    other = make_stream(toy, seed=4).take(6 * sum(EXAMPLES))
    assert not np.array_equal(other, again._order)


def test_resume_mid_epoch_matches_uninterrupted(toy) -> None:
    layout = GroupLayout.from_dataset(toy)
    ks = np.random.default_rng(1).integers(0, 9, size=60)  # the trainer takes a varying number
    straight = GroupSampler(layout, seed=5)
    want = [straight.take(int(k)) for k in ks]
    for cut in (1, 7, 23, 41):
        first = GroupSampler(layout, seed=5)
        got = [first.take(int(k)) for k in ks[:cut]]
        state = first.state_dict()
        resumed = GroupSampler(layout, seed=5)
        resumed.load_state_dict(dict(state))
        got += [resumed.take(int(k)) for k in ks[cut:]]
        assert all(np.array_equal(x, y) for x, y in zip(want, got)), cut
        assert resumed.state_dict() == straight.state_dict()
    # nothing skipped or repeated: the concatenation is whole epochs in order
    flat = np.concatenate(want)
    n = sum(EXAMPLES)
    for e in range(len(flat) // n):
        assert np.array_equal(flat[e * n:(e + 1) * n], GroupSampler(layout, 5, epoch=e)._order)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_disjoint_and_cover_all_groups(toy, world) -> None:
    layout = GroupLayout.from_dataset(toy)
    g_all = np.asarray(toy.arrays["group_ids"])
    for epoch in range(4):
        shards = [GroupSampler(layout, seed=2, rank=r, world_size=world, epoch=epoch)._order for r in range(world)]
        groups = [set(g_all[s].tolist()) for s in shards]
        assert all(groups), "every rank gets groups"
        assert sum(len(x) for x in groups) == len(set().union(*groups)) == len(AUGS)
        assert sum(len(s) for s in shards) == sum(EXAMPLES)
        assert len(set(np.concatenate(shards).tolist())) == sum(EXAMPLES)
    with pytest.raises(DatasetError, match="7 puzzle groups is smaller than world_size=8"):
        GroupSampler(layout, seed=0, rank=0, world_size=8)


def test_uniform_fallback_without_groups_is_said_once(tmp_path, caplog) -> None:
    ds = PuzzleDataset(_write(tmp_path / "old", groups=False), "train")
    assert "groups" not in ds.meta
    with caplog.at_level(logging.WARNING, logger="trm.data.dataset"):
        s = make_stream(ds, seed=0)
        make_stream(ds, seed=0, rank=1, world_size=2)
    assert isinstance(s, SampleStream)
    assert sum("no group ids" in r.getMessage() for r in caplog.records) == 1
    assert epoch_size(ds.path) == len(ds)
    idx = s.take(len(ds))
    assert sorted(idx.tolist()) == list(range(len(ds)))
    # a checkpoint taken with the other kind of stream restarts at the next epoch, with a warning
    g = make_stream(PuzzleDataset(_write(tmp_path / "new"), "train"), seed=0)
    with caplog.at_level(logging.WARNING, logger="trm.data.dataset"):
        g.load_state_dict({"sampler": "uniform", "epoch": 4, "pos": 3})
    assert g.state_dict() == {"sampler": "groups", "epoch": 5, "pos": 0}
    assert any("does not fit" in r.getMessage() for r in caplog.records)
    g.load_state_dict({"epoch": 2, "pos": 0})  # the trainer's restart-at-an-epoch form
    assert g.state_dict()["epoch"] == 2


def test_writer_refuses_half_group_info(tmp_path) -> None:
    ones = np.ones(3, np.int32)
    with pytest.raises(DatasetError, match="has 'group_ids' but not 'aug_ids'"):
        with DatasetWriter(tmp_path / "ds", {"name": "x"}) as w:
            w.append("train", inputs=ones[:, None], labels=ones[:, None], puzzle_ids=ones, group_ids=ones)
    with pytest.raises(DatasetError, match="'aug_ids' must be integers"):
        with DatasetWriter(tmp_path / "ds", {"name": "x"}) as w:
            w.append("train", inputs=ones[:, None], labels=ones[:, None], puzzle_ids=ones, group_ids=ones,
                     aug_ids=ones.astype(np.float32))
    assert list(tmp_path.iterdir()) == []


def test_sudoku_groups_are_puzzles_and_their_shuffles(sudoku_data) -> None:
    ds = PuzzleDataset(sudoku_data, "train")
    s = read_meta(sudoku_data)["groups"]
    assert s["train"] == {"total_groups": 40, "total_puzzles": 200, "mean_puzzle_examples": 1.0,
                          "epoch_samples": 40.0}
    assert s["test"]["total_groups"] == s["test"]["total_puzzles"] == 16
    g, a = np.asarray(ds.arrays["group_ids"]), np.asarray(ds.arrays["aug_ids"])
    assert np.array_equal(g, np.repeat(np.arange(40), 5)) and np.array_equal(a, np.tile(np.arange(5), 40))
    # copy 0 is the original: same blanks as the other copies of its group (a shuffle keeps their count)
    x = np.asarray(ds.arrays["inputs"])
    assert ((x == 1).sum(1).reshape(40, 5) == (x[a == 0] == 1).sum(1)[:, None]).all()
    idx = make_stream(ds, seed=0).take(40)
    assert sorted(g[idx].tolist()) == list(range(40))


def test_sudoku_build_groups_survive_chunking(tmp_path) -> None:
    p, s, _ = sudoku.generate(3, seed=1, min_givens=40, max_givens=45)
    out = sudoku.build_dataset(tmp_path / "ds", (p, s), (p, s), augmentations=3, seed=0, chunk=5)
    ds = PuzzleDataset(out, "train")
    assert np.array_equal(np.asarray(ds.arrays["group_ids"]), np.repeat(np.arange(3), 4))
    assert np.array_equal(np.asarray(ds.arrays["aug_ids"]), np.tile(np.arange(4), 3))


def test_writer_writes_each_array_once_and_publishes_at_close(tmp_path):
    """Chunks stream into the final .npy (no second copy): mid-build the temporary folder holds
    exactly the header plus the bytes appended so far, each file reading as an empty array
    (never a truncated one), and nothing is at `out` until close publishes it."""
    out = tmp_path / "ds"
    chunks = [np.arange(i * 30, (i + 1) * 30, dtype=np.int16).reshape(10, 3) for i in range(4)]
    with DatasetWriter(out, {"name": "toy", "vocab_size": 4, "seq_len": 3, "num_puzzle_ids": 1}) as w:
        for k, c in enumerate(chunks, start=1):
            w.append("train", inputs=c, labels=c, puzzle_ids=np.zeros(len(c), np.int32))
            for writer in w.writers["train"].values():
                writer.f.flush()  # what Python still buffers is on disk too
            files = sorted(p.relative_to(w.tmp).as_posix() for p in w.tmp.rglob("*") if p.is_file())
            assert files == ["train/inputs.npy", "train/labels.npy", "train/puzzle_ids.npy"]
            header = w.writers["train"]["inputs"].header_len
            assert (w.tmp / "train/inputs.npy").stat().st_size == header + k * c.nbytes
            assert np.load(w.tmp / "train/inputs.npy").shape == (0, 3)
            assert not out.exists()
    loaded = np.load(out / "train" / "labels.npy", mmap_mode="r")
    assert loaded.dtype == np.int16 and np.array_equal(loaded, np.concatenate(chunks))
    assert read_meta(out)["splits"] == {"train": 40}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # the temporary folder is gone
