"""The errors sparsec raises for problems a user can fix. The CLI prints them as one line."""


def first_line(err: BaseException) -> str:
    """The first line of a library's error message (ONNX puts the reason there), else its type."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def last_line(err: BaseException) -> str:
    """The last line of a library's error message (TVM's C++ errors end with the reason, after a
    backtrace), else its type."""
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__


class SparsecError(Exception):
    """Base class: a clear, user-facing problem (bad file, bad input, unsupported op)."""


class ModelLoadError(SparsecError):
    """The model file is missing, malformed, truncated or unsafe (external data escaping)."""


class UnsupportedOpError(SparsecError):
    """Ops the backend cannot lower. ``ops`` lists (op_type, domain, node_name, opset)."""

    def __init__(self, ops: list[tuple[str, str, str, int | None]], backend: str):
        self.ops = ops
        self.backend = backend
        shown = "; ".join(
            f"{op} (domain {dom or 'ai.onnx'}, node {name!r}, opset {ver})" for op, dom, name, ver in ops[:12]
        )
        more = f"; and {len(ops) - 12} more" if len(ops) > 12 else ""
        super().__init__(f"{backend} cannot lower {len(ops)} op(s): {shown}{more}")


class InputError(SparsecError):
    """Run-time feeds that do not match the model: unknown or missing name, wrong shape or dtype."""


class RunError(SparsecError):
    """The compiled model stopped on the inputs given, with the backend's reason (an index out of
    range, for one): the inputs are inconsistent with the model, not its shapes or dtypes."""


class CompileError(SparsecError):
    """Compilation failed for a reason the user should know about (the message says which)."""


class BackendOutputError(SparsecError):
    """A backend returned an output whose dtype or shape contradicts the model's inferred types:
    refused rather than handed back as a silently wrong answer."""
