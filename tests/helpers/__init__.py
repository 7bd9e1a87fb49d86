"""What several test modules share (test modules never import each other): image folders on disk, runs of the
commands and their one-line errors, float64 formulations and the kernel fuzz."""
