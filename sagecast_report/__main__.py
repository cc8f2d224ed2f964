"""`python -m sagecast_report`: the same as the console script `sagecast-report` (sagecast_report.build)."""

from sagecast_report.build import main

main()
