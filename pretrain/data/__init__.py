"""Text and labelled data: reading input files and Hugging Face datasets, cleaning, deduplication,
decontamination, the formats one stage hands the next, shard tasks, and the task reader. It may import
`pretrain.core`.
"""
