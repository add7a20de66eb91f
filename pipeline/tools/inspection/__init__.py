"""`pipeline inspect`: gates, cell state, gradient flow, and report pages."""

