"""Rule-file schema, loading, compilation to the matching core, and the pure evaluator."""
