"""One module per `advbp` command; each stays thin: parse, build a config, call one function, print."""
