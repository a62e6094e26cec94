"""Bring a model from another framework into `tinycomp.nn`, then compile it like any other.

    from tinycomp.interop import from_torch, from_onnx, from_sklearn
    model = from_torch(torch_module)        # nn.Sequential / nn.Module of Linear, ReLU, GELU, ...
    model = from_onnx("model.onnx")         # Gemm, MatMul, Add, Relu, Softmax, Gelu, ...
    model = from_sklearn(fitted_mlp)        # MLPs, linear models, Pipelines of scalers and one of them
    fast = tinycomp.compile(model)

Each returns a `tinycomp.nn` model (a `Sequential` for a chain of layers, a `GraphModel` when values
branch and join) whose eager output matches the source framework within float32 rounding. The
frameworks are optional dependencies, imported only when their importer is called
(`pip install -e '.[torch]'`, `'.[onnx]'`, `'.[sklearn]'`, or all three as `'.[interop]'`, from
the tinycomp checkout). Anything the importer does not know raises `tinycomp.CompileError` naming
the node or module and its type.
"""

from .common import GraphModel
from .onnx_import import from_onnx
from .sklearn_import import from_sklearn
from .torch_import import from_torch

__all__ = ["GraphModel", "from_onnx", "from_sklearn", "from_torch"]
