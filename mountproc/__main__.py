"""``python -m mountproc``."""

from mountproc._cli import main

main()
