"""pyactor.tune: hyperparameter search run as trial actors. Its modules arrive with the tuning
issue; see the README's layout."""
