"""Models and their tokenizers: the supported encoder families, loading a model folder safely, the fast
tokenizer of a folder and how well it fits a text, and extending a vocabulary. It may import
`pretrain.core`.
"""
