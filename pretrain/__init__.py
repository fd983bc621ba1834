"""Domain-adaptive pretraining of BERT-family encoders: the library (no Prefect here; see `flows/`)."""
