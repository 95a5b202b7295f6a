"""Data-parallel training over MPI: every rank holds the (memory-mapped) base model, computes the
LoRA gradients of its rows of each batch, the gradients are summed, and every rank applies the same
Adam step. One process without an MPI launcher runs exactly as before (``Solo``).

What makes N ranks train like one process:
- every rank draws the whole global batch from the same seeded stream and keeps its rows of it
  (``rows``), so the sample order, the epoch counters and the shuffle state in checkpoints depend on
  the seed alone, never on the number of ranks: a checkpoint written by N ranks resumes on M;
- each rank scales its loss by the *global* count of target tokens, so the summed gradients equal the
  one-process gradient; clipping, the schedule and Adam then run on identical numbers everywhere;
- the gradients travel as one flattened float32 buffer through ``MPI.Iallreduce`` (the per-pass loss
  sums and the Ctrl-C flag in a small float64 one), polled against a deadline: a rank that died or
  hangs stops the others within ``--mpi-timeout`` seconds with a message naming it (every rank tells
  every other one when it reaches an exchange), never a silent hang;
- rank 0 alone reads the checkpoint (broadcast to the others, so they need no copy of it), prints and
  writes files; inputs that differ between ranks (model, data, options, tokenization) are refused at
  start with the same error on every rank.

MPI is "asked for" by launching under an MPI launcher (mpirun/mpiexec/srun set OMPI_COMM_WORLD_SIZE,
PMI_SIZE, PMIX_RANK, ...); mpi4py (``pip install ggtune[mpi]``) is imported only then.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import fields

import numpy as np

# Environment variables by which launchers announce the job's size, and the rank alone.
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_RANK_VARS = ("PMIX_RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
# Options whose value may differ between ranks: paths whose *contents* are compared instead, the
# checkpoint (rank 0 alone reads it), and what only changes speed or what is printed.
RANK_LOCAL_OPTIONS = {"model_base", "train_data", "val_data", "checkpoint_in", "threads", "verbose", "profile"}
SAMPLED_BYTES = 1 << 20  # a file's digest covers its size and its first, middle and last MiB
ARRIVAL_TAG = 7


class DistributedError(ValueError):
    """An MPI setup or input problem, raised alike on every rank (one line on the command line)."""


def launcher_size() -> int | None:
    """The number of processes an MPI launcher started, as its environment says; None outside one."""
    sizes = [int(os.environ[v]) for v in LAUNCHER_SIZE_VARS if os.environ.get(v, "").isdigit()]
    if sizes:
        return max(sizes)
    return 0 if any(v in os.environ for v in LAUNCHER_RANK_VARS) else None  # 0: launched, size unknown


def connect(timeout: float):
    """The ranks of this run: ``Solo`` outside an MPI launcher, else ``MpiRanks`` over a private
    duplicate of MPI_COMM_WORLD."""
    if not timeout > 0:  # NaN too; inf is allowed: wait for ever
        raise DistributedError(f"--mpi-timeout: expected a positive number of seconds, got {timeout}")
    announced = launcher_size()
    if announced is None:
        return Solo()
    try:
        from mpi4py import MPI
    except ImportError:
        if announced > 1:
            raise DistributedError(
                f"started by an MPI launcher as {announced} processes, but mpi4py is not installed: "
                f"pip install 'ggtune[mpi]' (or run a single process without mpirun)") from None
        return Solo()
    world = MPI.COMM_WORLD
    if world.Get_size() == 1:
        if announced > 1:
            raise DistributedError(
                f"the launcher started {announced} processes but MPI sees each one alone: mpi4py's MPI "
                f"library ({MPI.Get_library_version().splitlines()[0][:60]}) is not the launcher's "
                f"(under SLURM: srun --mpi=pmix)")
        return Solo()
    return MpiRanks(MPI, world, timeout)


@contextlib.contextmanager
def session(timeout: float):
    """The ranks for one training run. A failure on some ranks only (anything but a
    DistributedError, which every rank raises alike) aborts the whole job at once, naming the rank,
    rather than leaving the others to wait for it."""
    ranks = connect(timeout)
    try:
        yield ranks
    except DistributedError:
        raise
    except BaseException as error:
        ranks.abort_on(error)
        raise
    finally:
        ranks.close()


def split_rows(n_rows: int, size: int, rank: int) -> slice:
    """Rows [lo, hi) of a batch of n_rows for `rank` of `size`: contiguous shares that differ by at
    most one row, the larger ones first (rank 0 has the most, as the memory plan says)."""
    base, extra = divmod(n_rows, size)
    lo = rank * base + min(rank, extra)
    return slice(lo, lo + base + (1 if rank < extra else 0))


def file_digest(path: str) -> str:
    """Size and a hash of the first, middle and last MiB (the whole file when small): enough to tell
    two different models or data files apart without reading gigabytes."""
    size = os.path.getsize(path)
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for start in sorted({0, max(0, size // 2 - SAMPLED_BYTES // 2), max(0, size - SAMPLED_BYTES)}):
            f.seek(start)
            h.update(f.read(SAMPLED_BYTES))
    return f"{size} bytes, {h.hexdigest()}"


def arrays_digest(arrays) -> str:
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).view(np.uint8).reshape(-1))
    return h.hexdigest()


def input_digest(opts) -> dict[str, object]:
    """What must be the same on every rank, by the name the user knows it by."""
    from . import __version__

    digest: dict[str, object] = {"ggtune version": __version__}
    for option, path in (("--model-base", opts.model_base), ("--train-data", opts.train_data),
                         ("--val-data", opts.val_data)):
        # what is wrong with a file that is not there is the loaders' to say, as in one process
        digest[option] = file_digest(path) if os.path.isfile(path) else "not a file"
    for f in fields(opts):
        if f.name not in RANK_LOCAL_OPTIONS:
            digest["--" + f.name.replace("_", "-")] = getattr(opts, f.name)
    return digest


class Solo:
    """One process: every exchange is the identity."""
    rank, size, is_root = 0, 1, True
    exchange_seconds = 0.0  # time spent in gradient exchanges, cumulative

    def agree(self, what: str, compute):
        return compute()

    def from_root(self, compute):
        return compute()

    def rows(self, n_rows: int) -> slice:
        return slice(0, n_rows)

    def describe(self, n_batch: int, n_params: int, threads: int) -> list[str]:
        return []

    def sum_step(self, grads: dict[str, np.ndarray], loss_sums: list[float], interrupted: bool):
        return loss_sums, interrupted

    def abort_on(self, error: BaseException) -> None:
        pass

    def close(self) -> None:
        pass


class MpiRanks:
    """Ranks of an MPI job. Every exchange is non-blocking and polled against ``timeout`` seconds."""

    def __init__(self, MPI, world, timeout: float):
        self.MPI, self.timeout = MPI, timeout
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.comm = self._duplicate(world)  # private: a user's own MPI traffic cannot mix with ours
        self.notices = self._duplicate(world)  # arrival notices travel apart from the collectives
        self.is_root = self.rank == 0
        self.exchanges = 0  # collectives so far (their arrival notices are numbered by it)
        self.steps = 0  # gradient exchanges so far
        self.exchange_seconds = 0.0
        self.gradient_buffer = None  # [n_params] float32, allocated at the first step
        in_main_thread = threading.current_thread() is threading.main_thread()  # signals need it
        self.previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm) if in_main_thread else None

    # ------------------------------------------------------------------ what the trainer calls
    def rows(self, n_rows: int) -> slice:
        return split_rows(n_rows, self.size, self.rank)

    def describe(self, n_batch: int, n_params: int, threads: int) -> list[str]:
        """What rank 0 says at start: the split, the traffic, and threads that would oversubscribe."""
        lines = [f"data-parallel over {self.size} MPI ranks: {n_batch} sequences per batch split by rank, "
                 f"{n_params * 4 / 2**20:.1f} MiB of gradients exchanged per step"]
        local = _ranks_on_this_machine()
        mine = threads or len(os.sched_getaffinity(0))  # --threads 0: the cores this rank may run on
        if local > 1 and local * mine > (os.cpu_count() or 1):
            lines.append(f"note: {local} ranks on this machine with {mine} threads each oversubscribe its "
                         f"{os.cpu_count()} cores; --threads {max(1, (os.cpu_count() or 1) // local)} would not")
        return lines

    def agree(self, what: str, compute):
        """Runs compute() -> dict on every rank and checks that all ranks got rank 0's values; an
        exception on any rank, or a difference, raises one DistributedError on every rank."""
        try:
            mine = ("ok", compute())
        except (ValueError, OSError) as error:
            mine = ("error", str(error))
        everyone = [pickle.loads(b) for b in self._allgather_bytes(pickle.dumps(mine), what)]
        failures = _ranks_by_message([(r, value) for r, (status, value) in enumerate(everyone) if status == "error"])
        if failures:
            raise DistributedError("; ".join(f"{ranks}: {message}" for message, ranks in failures.items()))
        reference = everyone[0][1]
        differences = [f"{key} differs on rank {r} ({value[key]!r}) from rank 0 ({reference[key]!r})"
                       for r, (_, value) in enumerate(everyone[1:], 1)
                       for key in reference if value.get(key) != reference[key]]
        if differences:
            raise DistributedError(f"{what} differ between ranks: " + "; ".join(differences[:4])
                                   + ("; ..." if len(differences) > 4 else ""))
        return reference

    def from_root(self, compute):
        """compute() run on rank 0 alone, its result (or its error) delivered to every rank."""
        payload = b""
        if self.is_root:
            try:
                payload = pickle.dumps(("ok", compute()))
            except (ValueError, OSError) as error:
                payload = pickle.dumps(("error", str(error)))
        status, value = pickle.loads(self._allgather_bytes(payload, "the broadcast from rank 0")[0])
        if status == "error":  # the same error on every rank, so none of them aborts the job
            raise DistributedError(value)
        return value

    def sum_step(self, grads: dict[str, np.ndarray], loss_sums: list[float], interrupted: bool):
        """Sums the gradients (in place), the per-pass loss sums and the Ctrl-C flags over the ranks."""
        started = time.perf_counter()
        arrays = list(grads.values())
        n = sum(a.size for a in arrays)
        if self.gradient_buffer is None or self.gradient_buffer.size != n:
            self.gradient_buffer = np.empty(n, np.float32)
        flat = self.gradient_buffer  # [n_params] float32: one message, not one per tensor
        _pack(arrays, flat)
        scalars = np.array([*loss_sums, float(interrupted)], np.float64)  # [grad_acc + 1]
        self.steps += 1
        what = f"the gradient exchange of step {self.steps} of this run"
        self._collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, flat, self.MPI.SUM), what)
        self._collective(lambda: self.comm.Iallreduce(self.MPI.IN_PLACE, scalars, self.MPI.SUM), what)
        _unpack(flat, arrays)
        self.exchange_seconds += time.perf_counter() - started
        return [float(s) for s in scalars[:-1]], bool(scalars[-1] > 0)

    def abort_on(self, error: BaseException) -> None:
        message = "interrupted" if isinstance(error, KeyboardInterrupt) else f"{type(error).__name__}: {error}"
        self._abort(f"{message}; stopping every rank")

    def close(self) -> None:
        if self.previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self.previous_sigterm)
        self.notices.Free()
        self.comm.Free()

    # ------------------------------------------------------------------ exchanges with a deadline
    def _duplicate(self, world):
        """A duplicate of `world`, made without blocking: a rank that never gets here cannot hang the others."""
        comm, request = world.Idup()
        self._wait(request.Test, time.monotonic() + self.timeout, lambda: self._abort(
            f"not every rank started training within {self.timeout:g} s (--mpi-timeout); stopping every rank"))
        return comm

    def _allgather_bytes(self, payload: bytes, what: str) -> list[bytes]:
        """Every rank's payload (of any length, empty allowed), in rank order."""
        lengths = np.zeros(self.size, np.int64)
        mine = np.array([len(payload)], np.int64)
        MPI = self.MPI
        self._collective(lambda: self.comm.Iallgather(mine, [lengths, MPI.INT64_T]), what)
        data = np.empty(max(int(lengths.sum()), 1), np.uint8)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        send = np.frombuffer(payload, np.uint8) if payload else np.empty(0, np.uint8)
        self._collective(lambda: self.comm.Iallgatherv(
            [send, MPI.BYTE], [data, (lengths.tolist(), offsets.tolist()), MPI.BYTE]), what)
        return [data[o:o + n].tobytes() for o, n in zip(offsets, lengths)]

    def _collective(self, start, what: str) -> None:
        """Starts a non-blocking collective and waits for it against the deadline. Before it, this
        rank tells every other rank that it has arrived, so a rank that times out can name the ranks
        that never came."""
        self.exchanges += 1
        stamp = np.array([self.exchanges], np.int64)
        peers = [r for r in range(self.size) if r != self.rank]
        received = {r: np.zeros(1, np.int64) for r in peers}
        arrivals = {r: self.notices.Irecv(received[r], source=r, tag=ARRIVAL_TAG) for r in peers}
        sends = [self.notices.Isend(stamp, dest=r, tag=ARRIVAL_TAG) for r in peers]
        request = start()
        deadline = time.monotonic() + self.timeout
        self._wait(lambda: request.Test(), deadline, lambda: self._timed_out(what, arrivals))
        everything = list(arrivals.values()) + sends
        self._wait(lambda: self.MPI.Request.Testall(everything), deadline,
                   lambda: self._timed_out(what, arrivals))

    @staticmethod
    def _wait(done, deadline: float, on_timeout) -> None:
        pause = 0.0
        while not done():  # polling drives MPI's progress; the pause grows so an idle wait costs no core
            if time.monotonic() > deadline:
                on_timeout()
            time.sleep(pause)
            pause = min(pause * 2 or 1e-5, 1e-3)

    def _timed_out(self, what: str, arrivals) -> None:
        missing = [r for r, request in arrivals.items() if not request.Test()]
        who = (f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} never arrived "
               f"(died, hung or far slower)" if missing else
               "every rank arrived, but one stopped responding during it (hung, or its host was lost)")
        self._abort(f"{what} did not complete within {self.timeout:g} s (--mpi-timeout): {who}; "
                    f"stopping every rank")

    def _abort(self, message: str) -> None:
        print(f"ggtune: rank {self.rank} of {self.size}: {message}", file=sys.stderr, flush=True)
        self.MPI.COMM_WORLD.Abort(1)

    def _on_sigterm(self, signum, frame) -> None:
        # mpirun terminates the other ranks when one fails; say so before going
        print(f"ggtune: rank {self.rank} of {self.size}: terminated by the MPI launcher (another rank "
              f"failed or the job was cancelled; see its message)", file=sys.stderr, flush=True)
        os._exit(143)


def _ranks_on_this_machine() -> int:
    """As the launcher says (Open MPI, MPICH's hydra); 1 when it does not."""
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def _pack(arrays, flat: np.ndarray) -> None:
    offset = 0
    for a in arrays:
        flat[offset:offset + a.size] = a.reshape(-1)
        offset += a.size


def _unpack(flat: np.ndarray, arrays) -> None:
    offset = 0
    for a in arrays:
        a.reshape(-1)[:] = flat[offset:offset + a.size]
        offset += a.size


def _ranks_by_message(failures: list[tuple[int, str]]) -> dict[str, str]:
    """{message: 'rank 1' or 'ranks 0, 1'}: one line per distinct error, not one per rank."""
    grouped: dict[str, list[int]] = {}
    for rank, message in failures:
        grouped.setdefault(message, []).append(rank)
    return {m: ("ranks " if len(r) > 1 else "rank ") + ", ".join(map(str, r)) for m, r in grouped.items()}

