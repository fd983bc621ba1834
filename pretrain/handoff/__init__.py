"""Handing a model over: export as a standalone folder with its model card, ONNX and int8, labelling texts
with an exported model, and embeddings. It may import `pretrain.core`, `pretrain.data`,
`pretrain.models`, `pretrain.training` and `pretrain.finetuning`.
"""
