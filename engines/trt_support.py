"""Which ONNX operators TensorRT's ONNX parser imports (facts from onnx-tensorrt's
docs/operators.md for TensorRT 10.0, opsets 9 to 20), and which tensor types it takes."""

# "Y" rows of the support matrix.
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

MIN_OPSET, MAX_OPSET = 9, 20
TOPK_MAX_K = 3840

# ONNX element types TensorRT takes (DOUBLE is only cast down, so it is reported too).
SUPPORTED_TYPES = frozenset(["FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL",
                             "FLOAT8E4M3FN", "INT4"])

# (op_type, input index) pairs that TensorRT needs as shape tensors: a network input that reaches
# one of them must be a shape input with values in the optimization profile.
SHAPE_POSITIONS = {
    "Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "Range": (0, 1, 2), "TopK": (1,),
    "ConstantOfShape": (0,), "Tile": (1,), "Pad": (1,), "Unsqueeze": (1,), "Squeeze": (1,),
    "Split": (1,), "OneHot": (1,), "Resize": (2, 3), "ReduceMean": (1,), "ReduceSum": (1,),
    "ReduceMax": (1,), "ReduceMin": (1,),
}
