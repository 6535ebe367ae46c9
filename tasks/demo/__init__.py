"""Demo data set and model trainer: everything generated in code, nothing downloaded."""
