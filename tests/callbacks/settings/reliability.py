SETTINGS = {
    "NonFiniteGuard": {"kwargs": {"check_weights_every_n_steps": 1}, "model": "lenet300100"},
}
