"""nbconv: Theano's abstract-conv API on NumPy arrays, computed by parallel Numba kernels."""
from . import threads  # first: sets the OpenMP wait policy before any Numba pool starts
from . import cpu as _cpu  # noqa: F401  (registers the CPU algorithms)
from . import config, registry
from .api import (
    bilinear_kernel_1D,
    bilinear_kernel_2D,
    bilinear_upsampling,
    causal_conv1d,
    conv2d,
    conv2d_grad_wrt_inputs,
    conv2d_grad_wrt_weights,
    conv2d_transpose,
    conv3d,
    conv3d_grad_wrt_inputs,
    conv3d_grad_wrt_weights,
    conv3d_transpose,
    frac_bilinear_upsampling,
    separable_conv2d,
    separable_conv3d,
)
from .shapes import (
    assert_conv_shape,
    border_mode_to_pad,
    check_conv_gradinputs_shape,
    get_conv_gradinputs_shape,
    get_conv_gradinputs_shape_1axis,
    get_conv_gradweights_shape,
    get_conv_gradweights_shape_1axis,
    get_conv_output_shape,
    get_conv_shape_1axis,
)
from .autotune import record, tune
from .spec import AlgorithmNotApplicable, ConvSpec

__version__ = "0.1.0"

__all__ = [
    "AlgorithmNotApplicable", "ConvSpec", "config", "record", "registry", "threads", "tune",
    "conv2d", "conv2d_grad_wrt_inputs", "conv2d_grad_wrt_weights", "conv2d_transpose",
    "conv3d", "conv3d_grad_wrt_inputs", "conv3d_grad_wrt_weights", "conv3d_transpose",
    "separable_conv2d", "separable_conv3d", "causal_conv1d",
    "bilinear_kernel_1D", "bilinear_kernel_2D", "bilinear_upsampling", "frac_bilinear_upsampling",
    "get_conv_output_shape", "get_conv_shape_1axis", "get_conv_gradinputs_shape",
    "get_conv_gradinputs_shape_1axis", "get_conv_gradweights_shape",
    "get_conv_gradweights_shape_1axis", "check_conv_gradinputs_shape", "border_mode_to_pad",
    "assert_conv_shape",
]
