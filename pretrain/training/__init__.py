"""Masked-LM training: the training kit the pretrain and distill stages share, masking and the prediction
head, precision and machine checks, and FLOPs. It may import `pretrain.core`, `pretrain.data` and
`pretrain.models`.
"""
