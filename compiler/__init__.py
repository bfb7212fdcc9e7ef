"""sparsec: a compiler for sparse and conditional computation graphs, from ONNX, with TVM.

    import sparsec
    model = sparsec.compile("model.onnx", target="llvm")
    outputs = model.run({"x": x})
"""

from .benchmark import BenchResult, bench
from .compiled import CompiledModel, TensorSpec, load_compiled
from .driver import compile, prepare
from .errors import BackendOutputError, CompileError, InputError, ModelLoadError, RunError, SparsecError, UnsupportedOpError
from .frontend import load, save, to_onnx
from .ir import Graph, Node, Value, print_graph, verify
from .versions import versions

__version__ = "0.1.0"

__all__ = [
    "compile", "bench", "BenchResult", "load", "load_compiled", "save", "to_onnx", "prepare", "CompiledModel", "TensorSpec",
    "Graph", "Node", "Value", "print_graph", "verify", "versions",
    "SparsecError", "BackendOutputError", "ModelLoadError", "InputError", "RunError", "UnsupportedOpError", "CompileError",
]
