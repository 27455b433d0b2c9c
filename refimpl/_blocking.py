"""One workspace budget for every blocked loop of the package.

Several vectorized functions process their data in blocks — query rows of attention and AFA,
groups of chunks of linear and LSH attention, slabs of blocks of the IIR block filter, time
steps of the selective scan — so that their temporaries stay cache-sized instead of growing with
the sequence (N × N logits, an (N, C, dv) cumulative sum, another copy of the signal). The
blocking never changes what is computed, only how much of it is held at once: every block is
an independent slice of the same formula. Each caller states what one item (a row, a chunk,
a block) costs in float64 numbers, and :func:`per_block` says how many items fit.

The budget is a machine property, not a property of a formula, so it is written once, here.
Tests shrink it (``monkeypatch.setattr(refimpl._blocking, "WORKSPACE_FLOATS", 1)``) to force
one item per block and check that the blocked result equals the unblocked one.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import ctypes
import glob
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

__all__ = [
    "WORKSPACE_FLOATS",
    "MIN_BLOCK_ROWS",
    "THREADS",
    "THREAD_MIN_ELEMS",
    "ONE_THREAD_MACS",
    "per_block",
    "in_parts",
    "one_thread_matmul",
    "take_turns",
    "take_turns_one_blas",
    "share_cores_env",
    "in_blocks",
    "fill_blocks",
    "copy_transposed",
    "one_thread_blas",
    "blas_threads_settable",
]

#: float64 numbers the temporaries of one block may hold (2**18 = 2 MiB: a block stays in a
#: typical L2/L3 cache while it is shifted, exponentiated, summed and multiplied)
WORKSPACE_FLOATS = 2**18

#: the fewest query rows a block of softmax attention holds, whatever the budget says (isotropic AFA,
#: whose blocks carry a dozen elementwise passes, sizes its blocks to the budget instead, see refimpl.afa._Plan):
#: each block costs a few matrix products, and BLAS spends its time well only on large ones. With
#: 16- or 32-row blocks at N = 4096 … 8192 the many small multithreaded calls ran 2x to 20x slower
#: than 256-row blocks, worst when another process kept a core busy. A 256 x 8192 float64 block
#: (16 MiB) still fits a shared L3 cache.
MIN_BLOCK_ROWS = 256


def per_block(floats_per_item: int, *, minimum: int = 1) -> int:
    """How many items of ``floats_per_item`` float64 numbers each fit the workspace budget.

    At least ``minimum`` (default 1): an item larger than the budget is still processed, alone.

    Examples
    --------
    >>> per_block(1024) == WORKSPACE_FLOATS // 1024
    True
    >>> per_block(10**9)
    1
    """
    return max(minimum, WORKSPACE_FLOATS // max(1, int(floats_per_item)))


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def l2_cache_bytes(cache_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int | None:
    """The level-2 cache of one core (data or unified), in bytes, as Linux's sysfs reports it
    (``index*/level``, ``type``, ``size`` such as ``1024K``); None where it is not reported.

    Examples
    --------
    >>> size = l2_cache_bytes()
    >>> size is None or size > 0
    True
    """
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    for index in sorted(glob.glob(os.path.join(cache_dir, "index*"))):
        try:
            with open(os.path.join(index, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(index, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(index, "size")) as f:
                size = f.read().strip()
        except OSError:
            continue
        if level != "2" or kind not in ("Data", "Unified"):
            continue
        number, unit = (size[:-1], units[size[-1]]) if size[-1:] in units else (size, 1)
        if number.isdigit() and int(number) > 0:
            return int(number) * unit
    return None


#: threads over which :func:`in_parts` splits independent parts (heads, batch entries). NumPy's
#: ufuncs run on the calling thread only; its BLAS products and ufuncs release the GIL, so the
#: elementwise work of one part overlaps another part's on a second core. This pays off when the
#: parts' matrix products are small (BLAS keeps them on the calling thread), or when BLAS is held
#: to one thread meanwhile (:func:`one_thread_blas`), not when they are large multithreaded ones:
#: softmax attention's blocks (256 query rows × 8192 keys, d = 64) ran 1.2 to 2 times slower with
#: two heads in two threads on two cores than one head after the other, each thread's products
#: competing for the cores with the other's. Tests set it to 1 to get the unthreaded path.
THREADS = min(8, _usable_cores())

#: below this much work (in the caller's unit, e.g. float64 elements of a temporary) the parts
#: run in the calling thread: starting threads costs about 0.1 ms
THREAD_MIN_ELEMS = 1 << 16


def parts_for(n: int, elems: int) -> int:
    """How many threads :func:`in_parts` (and :func:`take_turns`) would use for ``n`` items and ``elems``
    of work: 1 when ``n`` <= 1, ``THREADS`` is 1, ``elems`` is below ``THREAD_MIN_ELEMS`` or the caller
    is itself one of the pool's threads.

    Examples
    --------
    >>> parts_for(1, 10**9), parts_for(5, 0)
    (1, 1)
    """
    parts = min(n, THREADS) if elems >= THREAD_MIN_ELEMS else 1
    return 1 if parts <= 1 or getattr(_worker, "busy", False) else parts


def in_parts(run: Callable[[slice], None], n: int, elems: int, *, one_blas: bool = False) -> None:
    """Call ``run(part)`` on contiguous slices ``part`` of ``range(n)``, one slice per thread.

    The parts must be independent and ``run`` must write its results into preallocated arrays
    (disjoint between parts), so that the split changes no result: each part is computed by the
    same operations as in one call ``run(slice(0, n))``, which is what happens when ``n`` <= 1,
    ``THREADS`` is 1 or ``elems`` is below ``THREAD_MIN_ELEMS``. Each thread runs in a copy of
    the caller's context: NumPy's error state (``np.errstate``) is a context variable and would
    otherwise be the default one in the threads. An exception of a part is re-raised here.

    The threads come from :data:`_POOL`, which keeps a thread for a short while after its part
    (:data:`_LINGER_S`): the several threaded stages of one function, and calls in quick
    succession, reuse threads instead of starting and joining new ones (about 0.3 ms a call for two
    threads on the benchmark machine, and a new thread's memory arena faults its pages in again).
    After a pause the threads are new ones again: on the benchmark machine, threads woken after
    0.3 s of sleep were often put on one core by the scheduler (SSD 1.5x slower), new ones never. A
    call made inside a part runs in that part's thread.

    ``one_blas``: hold NumPy's BLAS to one thread while the parts run in threads
    (:func:`one_thread_blas`), for parts that issue products OpenBLAS would split again over the
    cores, where two parts' products then compete for them. Products with more than 64 × 64
    outputs are such: the chunked linear recurrences with heads of 128 dimensions ran 1.6 to 2.4
    times slower without it (H = 4, L = 4096; measured).

    Examples
    --------
    >>> out = [0] * 5
    >>> def run(part):
    ...     for i in range(part.start, part.stop):
    ...         out[i] = i * i
    >>> in_parts(run, 5, elems=10**9); out
    [0, 1, 4, 9, 16]
    """
    parts = parts_for(n, elems)
    if parts == 1:
        run(slice(0, n))
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    with one_thread_blas() if one_blas else contextlib.nullcontext():
        futures = [_POOL.submit(contextvars.copy_context().run, run, slice(a, b)) for a, b in zip(bounds, bounds[1:])]
        for done in futures:
            done.result()


#: seconds a thread of :data:`_POOL` waits for more work before it ends
_LINGER_S = 0.05

_worker = threading.local()  # .busy: this thread is one of the pool's


class _Pool:
    """Threads for :func:`in_parts`: a task goes to an idle thread, or to a new one if none is idle;
    a thread that has waited :data:`_LINGER_S` seconds without a task ends.

    ``_idle`` counts the threads that are free or about to be: a thread counts itself free again
    before it publishes its result, so that a call made right after the previous one (the next
    stage of the same function) finds it.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._tasks: collections.deque = collections.deque()
        self._idle = 0

    def submit(self, fn, *args) -> Future:
        done = Future()
        with self._cv:
            self._tasks.append((done, fn, args))
            if len(self._tasks) > self._idle:  # more tasks than free threads: one more thread
                self._idle += 1
                threading.Thread(target=self._work, name="refimpl-part", daemon=True).start()
            else:
                self._cv.notify()
        return done

    def _work(self) -> None:
        _worker.busy = True
        while True:
            with self._cv:
                while not self._tasks:
                    if not self._cv.wait(_LINGER_S) and not self._tasks:
                        self._idle -= 1
                        return  # no work for a while: end (a later call starts a new thread)
                done, fn, args = self._tasks.popleft()
                self._idle -= 1
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # re-raised in the caller by done.result()
                result, error = None, exc
            with self._cv:
                self._idle += 1  # free again before the caller can see the result
            if error is None:
                done.set_result(result)
            else:
                done.set_exception(error)


_POOL = _Pool()
if hasattr(os, "register_at_fork"):  # a forked child has none of the parent's threads
    os.register_at_fork(after_in_child=_POOL._reset)


def take_turns(n_items: int, worker: Callable[[], Callable[[int], None]], elems: int) -> None:
    """``work(i)`` for every i in ``range(n_items)``, in the threads of :func:`in_parts`, items taken in turn.

    Each thread makes its own ``work = worker()`` (with its own buffers) and takes the next item
    from one shared counter until none is left, instead of a fixed share of the items: when a core
    is busy with something else (another process, or BLAS threads still spinning after a product
    elsewhere), the thread on the free core takes more items. The items must be independent and
    ``work(i)`` must do the same operations whichever thread runs it; then the result depends
    neither on the thread count nor on the order in which the items are taken.

    Examples
    --------
    >>> done = []
    >>> take_turns(4, lambda: done.append, elems=0); sorted(done)
    [0, 1, 2, 3]
    """
    if n_items == 1:  # one item: in the caller, without the thread machinery (25 us a call: the oracle's plain
        worker()(0)  # recurrences round small states in one block thousands of times a comparison)
        return
    lock, todo = threading.Lock(), iter(range(n_items))

    def run(part):
        work = worker()
        while True:
            with lock:  # each item is taken once
                i = next(todo, None)
            if i is None:
                return
            work(i)

    in_parts(run, n_items, elems)


def take_turns_one_blas(n_items: int, worker: Callable[[], Callable[[int], None]], elems: int, threaded: bool) -> None:
    """:func:`take_turns` with BLAS held to one thread (:func:`one_thread_blas`), for items whose
    products are large; without ``threaded``, or when BLAS cannot be held, the items run one after
    the other in the caller with one ``worker()``. Either way each item is the same operations."""
    with one_thread_blas() if threaded else contextlib.nullcontext(False) as split:
        if split:
            take_turns(n_items, worker, elems)
        else:
            work = worker()
            for i in range(n_items):
                work(i)


def in_blocks(block: Callable[[slice], None], n: int, size: int, elems: int) -> None:
    """``block(slice)`` on the blocks ``[0, size), [size, 2 size), …`` of ``range(n)``, taken in turn
    by the threads (:func:`take_turns`). The blocks are fixed by ``n`` and ``size`` alone, so a
    result assembled from them does not depend on the number of threads; ``block`` must write
    disjoint outputs.

    Examples
    --------
    >>> seen = []
    >>> in_blocks(seen.append, 5, 2, elems=0); seen
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    take_turns(-(-n // size), lambda: lambda i: block(slice(i * size, min(n, (i + 1) * size))), elems)


def fill_blocks(x: np.ndarray, block: Callable[[np.ndarray, np.ndarray], None], size: int, threads_from: int = 0) -> np.ndarray:
    """A new array of ``x``'s layout filled by ``block(x_part, out_part)`` on flat parts of ``size`` numbers (an
    elementwise map whose temporaries stay in cache), shared out between threads (:func:`in_blocks`) when ``x``
    holds at least ``threads_from`` numbers, else one after the other in the calling thread.

    Both arrays are read in memory order, so the parts hold the same positions whenever ``x`` is contiguous in
    some order of its axes (a transposed view stays transposed: no transposing copy); otherwise ravel copies ``x``
    in the order of its strides, which is the output's order too.

    Examples
    --------
    >>> fill_blocks(np.arange(5.0), lambda xb, ob: np.multiply(xb, 2.0, out=ob), size=2).tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
    """
    out = np.empty_like(x)
    xs, rs = x.ravel(order="K"), out.ravel(order="K")
    in_blocks(lambda sl: block(xs[sl], rs[sl]), xs.size, size, xs.size if xs.size >= threads_from else 0)
    return out


#: rows and columns of the tiles of :func:`copy_transposed`
_TILE = 512


def copy_transposed(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``dst[..., j, i] = src[..., i, j]``: the last two axes swapped, copied tile by tile; returns ``dst``.

    A plain ``dst[...] = src.swapaxes(-1, -2)`` walks one of the two arrays with a stride of a whole
    row, and a tall, narrow slab such as 16 columns of a (65536, 64) array then misses the cache at
    almost every element (3.7 ms for 8 such columns, against 1.4 ms in tiles of 512 rows).

    Examples
    --------
    >>> x = np.arange(6.0).reshape(3, 2)
    >>> copy_transposed(x, np.empty((2, 3))).tolist()
    [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]]
    """
    rows, cols = src.shape[-2:]
    for i in range(0, rows, _TILE):
        for j in range(0, cols, _TILE):
            dst[..., j : j + _TILE, i : i + _TILE] = np.swapaxes(src[..., i : i + _TILE, j : j + _TILE], -1, -2)
    return dst


#: Products of fewer multiply-adds than this run on the calling thread in OpenBLAS (NumPy's BLAS);
#: larger ones are split over threads that synchronize inside the product. When another process
#: keeps a core busy, every such synchronization waits for a descheduled thread: on a shared
#: two-core machine the causal Performer (N = 8192, C = 256) ran 3 to 8 times slower with its
#: chunk products split by BLAS than in one-thread pieces.
ONE_THREAD_MACS = 2**19


def one_thread_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *, macs: int | None = None):
    """``np.matmul(a, b, out=out)`` for (stacks of) matrices, the rows of ``a`` cut into pieces of
    fewer than ``macs`` (default :data:`ONE_THREAD_MACS`) multiply-adds each.

    Every entry is the same dot product as in one call (its rounding may differ by the order in
    which BLAS's kernels accumulate for a different piece shape). When a divisor r of the row count lies
    within a factor 2 of the largest piece, the pieces are a free reshape (rows → (rows/r, r)) and
    one NumPy call issues them all; otherwise they are issued one slice of rows at a time.

    Examples
    --------
    >>> a, b = np.arange(12.0).reshape(4, 3), np.ones((3, 2))
    >>> bool(np.allclose(one_thread_matmul(a, b, macs=7), a @ b))
    True
    """
    macs = ONE_THREAD_MACS if macs is None else macs
    rows, inner, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    r_max = max(1, (macs - 1) // max(1, inner * cols))
    if rows <= r_max:
        return np.matmul(a, b, out=out)
    r = next(r for r in range(r_max, 0, -1) if rows % r == 0)
    if 2 * r >= r_max:  # equal pieces: one call on the reshaped stack (splitting an axis is a view)
        lead = a.shape[:-2]
        pieces = a.reshape(lead + (rows // r, r, inner))
        if out is None:
            return np.matmul(pieces, b[..., None, :, :]).reshape(np.broadcast_shapes(lead, b.shape[:-2]) + (rows, cols))
        np.matmul(pieces, b[..., None, :, :], out=out.reshape(out.shape[:-2] + (rows // r, r, cols)))
        return out
    if out is None:
        out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (rows, cols), dtype=np.result_type(a, b))
    for i in range(0, rows, r_max):
        np.matmul(a[..., i : i + r_max, :], b, out=out[..., i : i + r_max, :])
    return out


# ---------------------------------------------------------------------------------------------
# One BLAS thread per Python thread
# ---------------------------------------------------------------------------------------------

#: (set, get) of the number of threads of the OpenBLAS NumPy uses, symbol names by build: NumPy's
#: wheels (scipy-openblas, 64-bit integers, prefixed), then a plain OpenBLAS (e.g. conda-forge)
_OPENBLAS_SYMBOLS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _openblas_candidates() -> list[str]:
    """Paths of the OpenBLAS libraries this process may use, NumPy's own first."""
    found = []
    try:  # Linux: the libraries mapped into the process (NumPy has loaded its BLAS by now)
        with open("/proc/self/maps") as maps:
            found = [line.split(None, 5)[-1].strip() for line in maps if "openblas" in line.lower()]
    except OSError:
        pass
    here = os.path.dirname(np.__file__)
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*"):
        found += glob.glob(os.path.join(here, pattern))
    paths = list(dict.fromkeys(os.path.realpath(p) for p in found if os.path.isfile(p)))
    return sorted(paths, key=lambda p: "numpy" not in p)  # NumPy's bundled library first


def _find_openblas():
    """The ``(set, get)`` thread-count functions of NumPy's OpenBLAS, or None (another BLAS, or not found)."""
    for path in _openblas_candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _OPENBLAS_SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                set_fn, get_fn = getattr(lib, set_name), getattr(lib, get_name)
                set_fn.argtypes, set_fn.restype, get_fn.restype = [ctypes.c_int], None, ctypes.c_int
                return set_fn, get_fn
    return None


_BLAS = _find_openblas()
_blas_lock = threading.Lock()
_blas_users = 0  # callers inside one_thread_blas(); the first saves the thread count, the last restores it
_blas_saved = 1


def blas_threads_settable() -> bool:
    """Whether :func:`one_thread_blas` can hold NumPy's BLAS to one thread (an OpenBLAS was found)."""
    return _BLAS is not None


@contextlib.contextmanager
def one_thread_blas():
    """Run BLAS on one thread while the block is executed; yields whether that could be done.

    For code that splits its own work over :data:`THREADS` Python threads, each issuing large
    products: two threads whose products OpenBLAS splits again over both cores compete for them
    (softmax attention, 256 × 8192 logit blocks, two heads in two threads: 2x slower than one
    after the other), while with one BLAS thread each they ran 10–25% faster than one thread
    with two-threaded products (the exponentials, which NumPy runs on the calling thread, then
    overlap too). The thread count is a global setting of OpenBLAS (its "local" variant is not
    per thread in the builds NumPy ships), so it is changed by the first caller that enters and
    restored by the last that leaves; a product issued meanwhile by an unrelated thread of the
    process runs on one core. Yields False, changing nothing, when NumPy's BLAS is not an
    OpenBLAS whose thread count can be set (the caller then keeps its work on one thread).

    Examples
    --------
    >>> with one_thread_blas() as limited:
    ...     pass
    >>> isinstance(limited, bool)
    True
    """
    global _blas_users, _blas_saved
    if _BLAS is None:
        yield False
        return
    set_fn, get_fn = _BLAS
    with _blas_lock:
        if _blas_users == 0:
            _blas_saved = get_fn()
            set_fn(1)
        _blas_users += 1
    try:
        yield True
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                set_fn(_blas_saved)


#: environment variables that cap a new process's BLAS threads (OpenBLAS's own; OpenMP builds read the second)
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def share_cores_env(processes: int, environ=None) -> dict:
    """The environment for one of ``processes`` Python processes run side by side: a copy of
    ``environ`` (default ``os.environ``) whose BLAS thread caps give each process its share of the
    usable cores, ``max(1, cores // processes)``. Caps already set are kept, and one process gets
    the environment unchanged.

    OpenBLAS starts one thread per core in every process and its threads wait for work by
    spinning: with two processes on two cores, each running many small multithreaded products,
    every product waits for a thread the other process holds. A chapter made of thousands of
    16 × 16 products (chapter 11's online HiPPO recursion) ran 12 times slower beside another
    one than alone; with one BLAS thread each, as fast as alone. The test suite (pytest-xdist
    workers) and the book builder (chapters two at a time) start their processes with it.

    Examples
    --------
    >>> env = share_cores_env(2, {"PATH": "/bin"})
    >>> env["OPENBLAS_NUM_THREADS"] == str(max(1, _usable_cores() // 2)), env["PATH"]
    (True, '/bin')
    >>> share_cores_env(2, {"OPENBLAS_NUM_THREADS": "4"})["OPENBLAS_NUM_THREADS"]
    '4'
    >>> share_cores_env(1, {}) == {}
    True
    """
    env = dict(os.environ if environ is None else environ)
    if processes > 1:
        for name in BLAS_THREAD_VARS:
            env.setdefault(name, str(max(1, _usable_cores() // processes)))
    return env
