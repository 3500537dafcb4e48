"""The streaming roles: producer, model, metric (joiner and CSV sink) and plot."""
