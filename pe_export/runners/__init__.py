"""One small interface over the runtimes that execute PE artifacts."""
