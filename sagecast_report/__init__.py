"""The HTML report of a whole run (data, stage 1, stage 2, verdict), built from files only.

    python -m sagecast_report --runs runs          # or the console script sagecast-report; --help for the rest

`build` (sagecast_report.build) writes the page; `inputs` reads the files, `figures` and `stage1` draw them,
`browser` is the opt-in headless-Chromium check (`--check`). Nothing here imports a stage's training or
evaluation code: each stage writes what the report shows.
"""
