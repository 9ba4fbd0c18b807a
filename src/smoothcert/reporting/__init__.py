"""Tables, plots, importers and the paper comparison, from certificate tables."""
