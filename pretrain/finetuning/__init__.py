"""Fine-tuning on the task: one run with one learning rate and seed, the worker pool that builds runs,
label budgets, and the scores and paired comparison. It may import `pretrain.core`, `pretrain.data`,
`pretrain.models` and `pretrain.training`.
"""
