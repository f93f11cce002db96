"""Training: data pipeline, quantizers, BinaryLinear and binarize_(), distillation, the trainer."""
