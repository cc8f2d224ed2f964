"""`python -m data.synthetic`: see data.synthetic.generate."""

from data.synthetic.generate import main

main()
