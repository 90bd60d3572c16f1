// Mat-vec and embedding gather for unquantized weights: F32, F16, BF16 rows of n_in values (the
// decoders are in rf_gguf.h).
#include "rf_prelude.h"
#include "rf_gguf.h"

RF_WEIGHT_KERNELS(f32, DecF32)
RF_WEIGHT_KERNELS(f16, DecF16)
RF_WEIGHT_KERNELS(bf16, DecBF16)
