"""``sparsec bench`` / ``sparsec.bench``: compare backends on models, side by side, with correctness checked.

    import sparsec
    result = sparsec.bench("model.onnx", backends=["ort", "tvm", "sparsec"], batch=[1, 8], repeat=30)
    print(result.to_markdown()); result.to_json("bench.json"); result.plot("bench.png")
"""

from .contenders import Contender, Prepared, Settings, Skipped, contender_kinds, register_contender
from .families import Family, families, get_family, register_family
from .result import SCHEMA, SCHEMA_FILE, BackendResult, BenchResult, CaseResult
from .run import ModelCase, bench, sweep_cases

__all__ = [
    "bench", "sweep_cases", "ModelCase", "BenchResult", "CaseResult", "BackendResult", "SCHEMA", "SCHEMA_FILE",
    "Contender", "Prepared", "Settings", "Skipped", "register_contender", "contender_kinds",
    "Family", "register_family", "get_family", "families",
]
