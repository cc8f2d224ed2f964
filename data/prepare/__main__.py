"""`python -m data.prepare`: see data.prepare.run."""

from data.prepare.run import main

main()
