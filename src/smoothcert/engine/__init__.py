"""The engine: noise, sampling, counting and statistics -- the only code that turns draws into bounds.

It never imports a method, the pipeline or the CLI."""
