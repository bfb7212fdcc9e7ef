"""CompiledModel: run, inspect, export and reload what ``sparsec.compile`` built."""

from __future__ import annotations

import functools

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BackendOutputError, InputError, RunError, SparsecError, last_line
from .ir.graph import Value
from .ir.types import TensorType, dtype_of_array

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list  # ints, or names of symbolic dims, or None where unknown

    @staticmethod
    def of(value: Value) -> "TensorSpec":
        t = value.type
        if not isinstance(t, TensorType):
            return TensorSpec(value.name, "unknown", None)
        return TensorSpec(value.name, t.dtype, list(t.shape) if t.shape is not None else None)

    def __str__(self) -> str:
        shape = "?" if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{shape}]"


def _dtype_name(array: np.ndarray) -> str:
    return _name_of_dtype(array.dtype)


@functools.lru_cache(maxsize=None)
def _name_of_dtype(dtype: np.dtype) -> str:  # cached: the per-call checks of a one-token call add up
    try:
        return dtype_of_array(np.empty(0, dtype))
    except (ValueError, TypeError, KeyError):
        return str(dtype)


class CompiledModel:
    def __init__(self, runner, inputs: list[TensorSpec], outputs: list[TensorSpec], report: dict, manifest: dict):
        self._runner = runner
        self.inputs = inputs
        self.outputs = outputs
        self.report = report
        self.manifest = manifest
        # The last call's input signature (names, shapes, dtypes) and its outputs' (shape, dtype):
        # a call that repeats it skips the checks it would pass again. Right after other work
        # (another model, another runtime) the checks cost ~0.1 ms of cold Python, a tenth of a
        # one-token MoE layer. Outputs are compared only where the inputs fix their shapes.
        self._accepted: tuple | None = None
        self._produced: tuple | None = None
        symbols = {d for s in inputs if s.shape for d in s.shape if isinstance(d, str)}
        self._outputs_fixed = all(s.dtype != "unknown" and s.shape is not None
                                  and all(isinstance(d, int) or d in symbols for d in s.shape) for s in outputs)

    @property
    def target(self) -> str:
        return self.report["target"]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run on named inputs; returns the outputs in the graph's output order."""
        arrays = self._as_before(feeds)
        repeat = arrays is not None
        if not repeat:
            arrays = self._check_feeds(feeds)
        try:
            outputs = self._runner.run(arrays)
        except SparsecError:
            raise
        except Exception as err:  # the backend's own error types (TVM's raised from C++, ORT's)
            raise RunError(f"the {self.report.get('backend', 'backend')} backend stopped on these inputs: "
                           f"{last_line(err)}") from None
        if not (repeat and self._produced is not None and _same_signature(outputs, self._produced)):
            self._check_outputs(arrays, outputs)
            self._accepted = tuple((spec.name, a.shape, a.dtype) for spec, a in zip(self.inputs, arrays))
            fixed = self._outputs_fixed and all(type(o) is np.ndarray for o in outputs)
            self._produced = tuple((o.shape, o.dtype) for o in outputs) if fixed else None
        return outputs

    def _as_before(self, feeds) -> list[np.ndarray] | None:
        """The arrays in input order if ``feeds`` repeats the last accepted call's names, shapes
        and dtypes (numpy arrays only), else None: the full checks decide."""
        accepted = self._accepted
        if accepted is None or type(feeds) is not dict or len(feeds) != len(accepted):
            return None
        arrays = []
        for name, shape, dtype in accepted:
            array = feeds.get(name)
            if type(array) is not np.ndarray or array.shape != shape or array.dtype != dtype:
                return None
            arrays.append(array)
        return arrays

    def __call__(self, *args, **feeds) -> list[np.ndarray]:
        if args:
            if len(args) == 1 and isinstance(args[0], dict) and not feeds:
                return self.run(args[0])
            if len(args) > len(self.inputs):
                raise InputError(f"the model takes {len(self.inputs)} inputs, got {len(args)}")
            feeds = {**dict(zip((s.name for s in self.inputs), args)), **feeds}
        return self.run(feeds)

    def _check_outputs(self, arrays: list[np.ndarray], outputs: list) -> None:
        """Outputs must have the dtype and the dims the model's types promise (symbolic dims as the
        inputs bound them): a converter that gets a shape or dtype wrong fails loudly here."""
        bound = {d: a.shape[i] for spec, a in zip(self.inputs, arrays) if spec.shape
                 for i, d in enumerate(spec.shape) if isinstance(d, str)}
        for spec, out in zip(self.outputs, outputs):
            if not isinstance(out, np.ndarray) or spec.dtype == "unknown":
                continue
            problem = None
            if _dtype_name(out) != spec.dtype:
                problem = f"dtype {_dtype_name(out)}, expected {spec.dtype}"
            elif spec.shape is not None:
                want = [bound.get(d, d) if isinstance(d, str) else d for d in spec.shape]
                if out.ndim != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, out.shape)):
                    problem = f"shape {list(out.shape)}, expected {spec}"
            if problem:
                raise BackendOutputError(
                    f"the {self.report.get('backend', 'backend')} build returned output {spec.name!r} with {problem}; "
                    "this is a backend conversion bug, refused rather than returned (please report it)")

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not isinstance(feeds, dict):
            raise InputError("feeds must be a dict of input name -> numpy array")
        expected = [s.name for s in self.inputs]
        unknown = [k for k in feeds if k not in expected]
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; the model's inputs are {expected}")
        missing = [k for k in expected if k not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the model's inputs are: " + ", ".join(map(str, self.inputs)))
        symbols: dict[str, tuple[int, str]] = {}
        arrays = []
        for spec in self.inputs:
            array = feeds[spec.name]
            if not isinstance(array, np.ndarray):
                array = np.asarray(array)
            if _dtype_name(array) != spec.dtype:
                raise InputError(f"input {spec.name!r} has dtype {_dtype_name(array)}, expected {spec.dtype}")
            if spec.shape is not None:
                if array.ndim != len(spec.shape):
                    raise InputError(f"input {spec.name!r} has shape {list(array.shape)}, expected rank {len(spec.shape)} ({spec})")
                for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
                    if isinstance(want, int) and want != got:
                        raise InputError(f"input {spec.name!r} has shape {list(array.shape)}, expected {spec} (axis {axis})")
                    if isinstance(want, str):
                        seen = symbols.setdefault(want, (got, spec.name))
                        if seen[0] != got:
                            raise InputError(f"input {spec.name!r} gives dim {want!r} = {got}, but {seen[1]!r} gave {seen[0]}")
            arrays.append(array)
        return arrays

    # --- artifacts ------------------------------------------------------------------------------
    def export(self, folder: "str | os.PathLike") -> Path:
        """Write the compiled library and ``manifest.json`` to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not hasattr(self._runner, "export"):
            raise SparsecError(f"the {self.report.get('backend')} backend has nothing to export")
        files = self._runner.export(folder)
        manifest = dict(self.manifest, files=files, report=self.report,
                        inputs=[asdict(s) for s in self.inputs], outputs=[asdict(s) for s in self.outputs])
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        return folder

    def __repr__(self) -> str:
        ins = ", ".join(map(str, self.inputs))
        outs = ", ".join(map(str, self.outputs))
        return f"CompiledModel(target={self.target!r}, inputs=[{ins}], outputs=[{outs}])"


def _same_signature(arrays: list, signature: tuple) -> bool:
    return len(arrays) == len(signature) and all(
        type(a) is np.ndarray and a.shape == shape and a.dtype == dtype for a, (shape, dtype) in zip(arrays, signature))


def load_compiled(folder: "str | os.PathLike") -> CompiledModel:
    """Load what ``CompiledModel.export`` wrote, with no recompilation."""
    from sparsec.backends import get_backend

    from .versions import versions

    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise SparsecError(f"{folder} is not a compiled sparsec model (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SparsecError(f"{path} is corrupt: {err}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise SparsecError(f"{folder} was written in format {manifest.get('format')}; this sparsec reads format {FORMAT_VERSION}")
    built_with = manifest.get("versions", {}).get("tvm")
    if built_with and built_with != versions()["tvm"]:
        raise SparsecError(f"{folder} was compiled with TVM {built_with}; this install has {versions()['tvm']}: recompile it")
    runner = get_backend(manifest["backend"]).load(folder, manifest)
    specs = lambda items: [TensorSpec(**s) for s in items]  # noqa: E731
    return CompiledModel(runner, specs(manifest["inputs"]), specs(manifest["outputs"]), manifest["report"], manifest)
