"""Domain-adaptive pretraining of BERT-family encoders: the stages at the top (`python -m pretrain.<stage>`),
the library they share grouped by role below them (`core`, `data`, `models`, `training`, `finetuning`,
`handoff`). No Prefect here; see `flows/`.
"""
