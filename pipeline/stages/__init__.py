"""The five stages (prepare, tokenize, train, evaluate, export), each reading and writing files."""

