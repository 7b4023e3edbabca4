"""Authentication-overhead sweeps: the matrix of cells and each cell's figures (:mod:`.matrix`, pure), and
running every cell (:mod:`.run_cells`)."""
