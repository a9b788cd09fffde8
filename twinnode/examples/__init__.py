"""Example data sets shipped with the package (schemas; the data come from statsmodels)."""
