"""New versions made from stored ones: merge (each method one object in :mod:`.merge`), compress,
the LoRA algebra they share, measuring what a derived version kept, the sessions the CLI runs
(:mod:`.sessions`) and the merged standalone export."""
