"""The training stream's samples on the device, taken by halted slots without host synchronisation.

A supervision step refills its halted slots with the next samples of the stream, in slot order,
none skipped. How many slots halted is known only on the device; reading it back every step
(`nonzero()`, `take(k)`, copying the new rows from the host) would stall the GPU once per step.
Instead the stream is laid out ahead of time in a ring on the device and the step indexes it:

    free   = halted slots                              [B] bool, on the device
    offset = consumed + cumsum(free) - 1               slot i takes stream sample `offset[i]`
    rows   = ring[offset % capacity]                   a gather on the device
    consumed += free.sum()                             a device scalar, never read in the step

The ring holds dataset row indices when the dataset is resident on the device (it fits in
`RESIDENT_MAX_BYTES` and a quarter of the free device memory: then a sample is gathered from
device arrays), else the rows themselves (gathered on the host from the memory-mapped split and
copied asynchronously from pinned memory).

The host keeps the ring filled ahead of the device: it knows a lower bound of `consumed` (read
back with an asynchronous copy and an event it polls, never waited on) and an upper bound (at
most B samples per step since that reading), and writes the next stream samples whenever the
ring could run short, as long as they do not overwrite samples not yet surely consumed. Only
`sync()` (checkpoints, `state_dict`) waits for the device: it reads `consumed` and moves the
stream (`self.stream`, the checkpointed position) past exactly the samples the slots took.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from trm.data.dataset import PuzzleDataset

FIELDS = ("inputs", "labels", "puzzle_ids")
RESIDENT_MAX_BYTES = 4 << 30  # a training split up to this size lives on the device
AHEAD_STEPS = 32  # ring capacity in worst-case steps (every slot halting every step)


def dataset_bytes(ds: PuzzleDataset) -> int:
    return sum(int(ds.arrays[k].nbytes) for k in FIELDS)


def _stored(dtype: np.dtype) -> np.dtype:
    """The integer dtype a field keeps on the device: its own when torch has it."""
    return dtype if dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64) else np.dtype(np.int64)


def _to_torch(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=_stored(a.dtype)))


class DeviceFeed:
    """Samples of `stream` for a batch of `batch` slots, gathered on `device` (see module doc)."""

    def __init__(
        self,
        ds: PuzzleDataset,
        stream,
        device: torch.device,
        batch: int,
        ahead: int = AHEAD_STEPS,
        resident_max_bytes: int = RESIDENT_MAX_BYTES,
    ):
        self.ds, self.stream, self.device, self.B = ds, stream, device, batch
        self.cuda = device.type == "cuda"
        self.capacity = max(ahead, 2) * batch
        size = dataset_bytes(ds)
        limit = resident_max_bytes
        if self.cuda:
            limit = min(limit, torch.cuda.mem_get_info(device)[0] // 4)
        self.resident = size <= limit
        self.data: dict[str, torch.Tensor] = {}  # resident only: the whole split, on the device
        self.ring: torch.Tensor | dict[str, torch.Tensor]  # resident: row indices into `data`; else the rows
        if self.resident:  # the whole split on the device; the ring holds row indices
            self.data = {k: _to_torch(np.array(ds.arrays[k])).to(device) for k in FIELDS}
            self.ring = torch.zeros(self.capacity, dtype=torch.long, device=device)
        else:  # the ring holds the rows themselves
            self.ring = {
                k: torch.zeros(
                    (self.capacity, *ds.arrays[k].shape[1:]),
                    device=device,
                    dtype=torch.from_numpy(np.zeros(0, _stored(ds.arrays[k].dtype))).dtype,
                )
                for k in FIELDS
            }
        self.consumed = torch.zeros((), dtype=torch.long, device=device)
        # the host's reading of `consumed`: a (pinned) host tensor, read through a numpy view
        self._host = torch.zeros((), dtype=torch.long, pin_memory=self.cuda)
        self._host_np = self._host.numpy()
        self._event = torch.cuda.Event() if self.cuda else None
        self._reset()

    # ------------------------------------------------------------ host bookkeeping
    def _reset(self) -> None:
        """Start again from `self.stream`'s position, with an empty ring."""
        self._reader = copy.copy(self.stream)  # walks ahead, filling the ring
        self.consumed.zero_()
        self._written = 0  # stream samples written to the ring (counted from the reset)
        self._taken = 0  # of them, those `self.stream` has been moved past
        self._steps = 0  # next() calls since the reset
        self._known, self._known_steps = 0, 0  # consumed after `_known_steps` calls, as last read back
        self._pending: int | None = None  # calls covered by the reading in flight

    def _poll(self) -> None:
        """Take in a finished reading of `consumed` and start the next one; never waits."""
        if self._pending is not None and (self._event is None or self._event.query()):
            self._known, self._known_steps = int(self._host_np), self._pending
            self._pending = None
        if self._pending is None:
            self._host.copy_(self.consumed, non_blocking=self.cuda)
            if self._event is not None:
                self._event.record()
            self._pending = self._steps

    def _wait(self) -> None:
        """Read `consumed` exactly (waits for the device)."""
        self._host.copy_(self.consumed)
        self._known, self._known_steps, self._pending = int(self._host_np), self._steps, None

    def _fill(self) -> None:
        """Write the next stream samples to the ring so that the coming step finds its B."""
        need = self._known + (self._steps - self._known_steps + 1) * self.B
        if self._written >= need:
            return
        if need - self._known > self.capacity:
            self._wait()  # the device is `ahead` steps behind the host: only with a tiny ring
        self._write(self._known + self.capacity - self._written)  # fill it up

    def _write(self, m: int) -> None:
        idx = self._reader.take(m)
        start = self._written % self.capacity
        first = min(m, self.capacity - start)  # up to the ring's end, then from its start
        for lo, hi, at in ((0, first, start), (first, m, 0)):
            if lo == hi:
                continue
            dst = slice(at, at + hi - lo)
            if isinstance(self.ring, torch.Tensor):  # resident
                self.ring[dst].copy_(self._host_tensor(idx[lo:hi]), non_blocking=self.cuda)
            else:
                rows = self.ds.batch(idx[lo:hi])
                for k in FIELDS:
                    self.ring[k][dst].copy_(self._host_tensor(rows[k]), non_blocking=self.cuda)
        self._written += m

    def _host_tensor(self, a: np.ndarray) -> torch.Tensor:
        t = _to_torch(a)
        return t.pin_memory() if self.cuda else t

    # ------------------------------------------------------------ the step
    def next(self, free: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows [B, ...] whose slot i, where `free[i]`, holds the stream's next sample (in slot
        order); other slots hold some earlier sample, to be ignored. No host synchronisation."""
        self._poll()
        self._fill()
        taken = free.long().cumsum(0)
        at = (self.consumed + taken - 1).remainder(self.capacity)
        if isinstance(self.ring, torch.Tensor):  # resident
            rows = self.ring[at]
            out = {k: v[rows] for k, v in self.data.items()}
        else:
            out = {k: v[at] for k, v in self.ring.items()}
        self.consumed += taken[-1]
        self._steps += 1
        return out

    # ------------------------------------------------------------ exact position
    def sync(self) -> None:
        """Move `self.stream` past exactly the samples taken so far (waits for the device)."""
        self._wait()
        if self._known > self._taken:
            self.stream.take(self._known - self._taken)
            self._taken = self._known

    def state_dict(self) -> dict:
        self.sync()
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)
        self._reset()
