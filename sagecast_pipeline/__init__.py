"""The sagecast pipeline, declared once: every step's command, completion record and inputs (`steps`).

Rendered three ways: `python -m sagecast_pipeline data|stage1|stage2` (the Makefile targets), `sagecast-compare`
(`sagecast_pipeline.compare`, the larger comparison graph, on a synthetic sky or `--raw` data) and the job
scripts of `jobs/submit` (its `compare` renders that graph as jobs). A step is done when its completion record
exists (each tool writes its own, atomically, last); otherwise it is run again, and the tool resumes its own
checkpoint. Standard library only at import: `jobs/submit` imports it on bare login nodes (compare's checks of a
raw folder import the project when they run).
"""
