"""The core every other part stands on: errors, logging and progress, the typed config schema, the
content-addressed artifact store with its ids and code versions, the registry of aliases and runs, and
the summaries of a run. It may import nothing else of the project.
"""
