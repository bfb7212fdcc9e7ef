"""The memory floor of a call: a plain kernel that reads N bytes on TVM's thread pool and does
nothing else. A call that must read N bytes of weights from memory cannot take less on this host;
a baseline's time over the floor's bounds the speed-up any kernel reading those bytes could show.

    read = StreamRead(12_700_000, threads=2)
    read()  # one pass over the buffer (time this)
    read.total()  # what the last pass summed: the number of float32 elements read
"""

from __future__ import annotations

import numpy as np

LANES = 16  # floats per accumulator: two AVX2 or one AVX-512 register


class StreamRead:
    """A buffer of about ``nbytes`` (float32 ones, rounded down to whole vectors per thread) and
    a compiled kernel that sums it, one contiguous range per thread, as a weight stream is read."""

    def __init__(self, nbytes: int, threads: int):
        import tvm
        from tvm.script import tirx as T

        from sparsec.backends.tvm.targets import get_target

        rows = max(1, nbytes // (4 * LANES * threads))

        @T.prim_func
        def stream(data: T.Buffer((threads, rows, LANES), "float32"), out: T.Buffer((threads, LANES), "float32")):
            for part in T.parallel(threads):
                acc = T.decl_buffer((LANES,), "float32", scope="local")
                for lane in T.vectorized(LANES):
                    acc[lane] = T.float32(0)
                for row in range(rows):
                    for lane in T.vectorized(LANES):
                        acc[lane] = acc[lane] + data[part, row, lane]
                for lane in T.vectorized(LANES):
                    out[part, lane] = acc[lane]

        target = get_target("llvm").make({})
        self.kernel = tvm.compile(tvm.IRModule({"main": stream}), target=target)["main"]
        device = tvm.cpu()
        self.data = tvm.runtime.tensor(np.ones((threads, rows, LANES), np.float32), device)
        self.out = tvm.runtime.empty((threads, LANES), "float32", device)
        self.nbytes = threads * rows * LANES * 4

    def __call__(self) -> None:
        self.kernel(self.data, self.out)

    def total(self) -> float:
        return float(self.out.numpy().sum(dtype=np.float64))
