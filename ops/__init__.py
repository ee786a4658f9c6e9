"""Operations tooling: benchmarks and load scripts (not part of the installed package)."""
